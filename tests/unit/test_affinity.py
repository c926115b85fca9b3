"""How the router recognises a conversation across turns (``placement.affinity_key``)."""

from corral.router.placement import affinity_key


def test_the_turns_of_a_chat_share_a_key_and_other_chats_do_not():
    turn1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I'm Ann."}]
    turn2 = turn1 + [{"role": "assistant", "content": "Hello Ann."}, {"role": "user", "content": "Who am I?"}]
    other = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I'm Bob."}]
    key = affinity_key("/api/chat", {"messages": turn1})
    assert key and key == affinity_key("/api/chat", {"messages": turn2})
    assert key == affinity_key("/v1/chat/completions", {"messages": turn2, "stream": True})
    assert key != affinity_key("/api/chat", {"messages": other})


def test_completions_by_context_then_by_the_start_of_the_prompt():
    long_document = "Summarise: " + "lorem ipsum " * 200
    a = affinity_key("/api/generate", {"prompt": long_document + "part one"})
    assert a == affinity_key("/api/generate", {"prompt": long_document + "part two"})
    assert a != affinity_key("/api/generate", {"prompt": long_document, "system": "You are terse."})
    ctx = affinity_key("/api/generate", {"prompt": "and then?", "context": [1, 2, 3]})
    assert ctx == affinity_key("/api/generate", {"prompt": "go on", "context": [1, 2, 3]})


def test_nothing_to_go_by_means_no_key():
    assert affinity_key("/api/generate", {"model": "m"}) == ""
    assert affinity_key("/api/chat", {"messages": []}) == ""
    assert affinity_key("/api/generate", {"prompt": "x", "context": "not a list"})  # falls back to the prompt
