"""Images for a model with a projector, against a worker and through the cluster.

No small real vision model can be had from the registries here, so the test model gets a
projector built for it (tests/support/projector.py: a tiny CLIP encoder with seeded random
weights whose output has the model's width). Its answers mean nothing; what is checked is the
plumbing: the projector is stored as Ollama stores one and reported by show, images reach the
model as their own embeddings (counted in prompt_eval_count, different images giving different
greedy answers, the same image the same one), from every client, and a corrupt image is a 400.
"""

from __future__ import annotations

import os
import threading
import time

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.support.images import png_claiming
from tests.support.vision import CHECKS, MODEL, PROMPT, RED, b64

GREEDY = {"temperature": 0.0, "num_predict": 10}

def generate(http: httpx.Client, prompt: str, images: list[bytes], **extra: object) -> dict:
    r = http.post("/api/generate", json={"model": MODEL, "prompt": prompt, "images": [b64(i) for i in images],
                                         "stream": False, "options": GREEDY, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def chat(http: httpx.Client, messages: list[dict]) -> dict:
    r = http.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False, "options": GREEDY})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_projector_is_a_layer_of_its_own_and_show_reports_it(vision, http):
    shown = http.post("/api/show", json={"model": MODEL, "verbose": True}).json()
    assert "vision" in shown["capabilities"]
    info = shown["projector_info"]
    assert info["general.architecture"] == "clip"
    assert info["clip.has_vision_encoder"] is True
    tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
    # The size counts the projector's layer too, as Ollama's does (the rest: small layers that differ).
    assert 0 <= tags[MODEL]["size"] - tags["smollm2:135m"]["size"] - vision.stat().st_size < 4096


def test_image_tokens_are_counted_in_prompt_eval_count(vision, http):
    without = generate(http, "What is in this picture?", [])
    with_image = generate(http, "What is in this picture?", [RED])
    extra = with_image["prompt_eval_count"] - without["prompt_eval_count"]
    assert extra >= 16, (with_image, without)  # the projector's image is at least 16 embeddings


def test_two_images_give_different_answers_and_one_image_the_same(vision, http):
    red = generate(http, PROMPT, [RED])
    checks = generate(http, PROMPT, [CHECKS])
    assert red["response"] != checks["response"]
    assert generate(http, PROMPT, [RED])["response"] == red["response"]
    # Through chat, an image in a message is the same input as in generate's prompt.
    answer = chat(http, [{"role": "user", "content": PROMPT, "images": [b64(RED)]}])
    assert answer["message"]["content"] == red["response"]
    assert answer["prompt_eval_count"] == red["prompt_eval_count"]


def test_the_image_tag_places_the_image_in_the_text(vision, http):
    """``[img]`` in a message marks where its image goes; without one it goes first."""
    placed = chat(http, [{"role": "user", "content": PROMPT + " [img]", "images": [b64(RED)]}])
    assert placed["done"] is True
    rendered = http.post("/api/chat", json={"model": MODEL, "_debug_render_only": True,
                                            "messages": [{"role": "user", "content": "a [img] b", "images": [b64(RED)]}]})
    assert rendered.status_code == 200, rendered.text
    assert "a [img-0] b" in rendered.json()["_debug_info"]["rendered_template"]
    assert rendered.json()["_debug_info"]["image_count"] == 1


def test_a_second_chat_turn_with_the_image_answers_as_the_first(vision, http):
    """The next turn reuses the cached prefix, image included: the same greedy answer to the same turn."""
    first = chat(http, [{"role": "user", "content": PROMPT, "images": [b64(CHECKS)]}])
    turn = [{"role": "user", "content": PROMPT, "images": [b64(CHECKS)]},
            {"role": "assistant", "content": first["message"]["content"]},
            {"role": "user", "content": "And the colours?"}]
    second = chat(http, turn)
    assert chat(http, turn)["message"]["content"] == second["message"]["content"]
    assert second["prompt_eval_count"] > first["prompt_eval_count"]


@pytest.mark.parametrize("data", [os.urandom(64), b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a"])
def test_a_corrupt_image_is_400_and_the_server_goes_on(vision, http, data):
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "images": [b64(data)], "stream": False})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "Failed to load image or audio file"}
    r = http.post("/api/chat", json={"model": MODEL, "stream": True, "messages": [
        {"role": "user", "content": "hi", "images": [b64(RED), b64(data)]}]})
    assert r.status_code == 400 and r.json() == {"error": "Failed to load image or audio file"}
    assert generate(http, PROMPT, [RED])["done"] is True


def test_context_of_an_image_generate_holds_only_tokens(vision, http):
    reply = generate(http, PROMPT, [RED])
    assert reply["context"] and all(isinstance(t, int) and t >= 0 for t in reply["context"])
    # Sent back, it continues the text (the image is not part of it).
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "More.", "context": reply["context"],
                                         "stream": False, "options": GREEDY})
    assert r.status_code == 200, r.text


# -- the clients -------------------------------------------------------------------------------


def test_ollama_client_sends_images(vision, worker, http):
    client = ollama.Client(host=worker.url, timeout=120)
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": PROMPT, "images": [RED]}],
                        options=GREEDY)
    assert reply.message.content == generate(http, PROMPT, [RED])["response"]
    streamed = "".join(part.response for part in client.generate(model=MODEL, prompt=PROMPT,
                                                                  images=[CHECKS], options=GREEDY, stream=True))
    assert streamed == generate(http, PROMPT, [CHECKS])["response"]


def test_openai_sdk_image_parts(vision, worker, http):
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key="ollama", timeout=120, max_retries=0)
    completion = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=10,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": PROMPT},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(CHECKS)}}]}])
    # Ollama's mapping: each part is a message of its own (an image part's text is empty).
    native = chat(http, [{"role": "user", "content": PROMPT},
                         {"role": "user", "content": "", "images": [b64(CHECKS)]}])
    assert completion.choices[0].message.content == native["message"]["content"]
    assert completion.usage.prompt_tokens == native["prompt_eval_count"]


def test_anthropic_sdk_image_blocks(vision, worker, http):
    client = anthropic.Anthropic(base_url=worker.url, api_key="ollama", timeout=120, max_retries=0)
    message = client.messages.create(
        model=MODEL, max_tokens=10, extra_body={"temperature": 0.0},
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(RED)}},
            {"type": "text", "text": PROMPT}]}])
    native = chat(http, [{"role": "user", "content": PROMPT, "images": [b64(RED)]}])
    assert message.content[0].text == native["message"]["content"]
    assert message.usage.input_tokens == native["prompt_eval_count"]
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(b"nope")}}]}])
    assert raised.value.body["error"]["message"] == "Failed to load image or audio file"


def test_a_running_stream_goes_on_while_images_are_read(vision, worker, http):
    """Images are decoded between the decode loop's steps, not instead of them: a stream that
    runs while other requests bring images keeps getting tokens during their prefill."""
    arrivals: list[float] = []
    started = threading.Event()

    def stream() -> None:
        # Raw, the tiny model goes on with a story for hundreds of tokens (no early end of turn).
        body = {"model": MODEL, "prompt": "Once upon a time, in a small village by the sea, there lived", "raw": True,
                "options": {"temperature": 0, "num_predict": 200}}
        with httpx.Client(base_url=worker.url, timeout=120) as client, client.stream("POST", "/api/generate", json=body) as r:
            for line in r.iter_lines():
                if line:
                    arrivals.append(time.monotonic())
                    started.set()

    runner = threading.Thread(target=stream)
    runner.start()
    assert started.wait(60)
    began = time.monotonic()
    replies = [generate(http, PROMPT + " " + "Look closely. " * 40, [RED, CHECKS, RED]) for _ in range(3)]
    ended = time.monotonic()
    runner.join(120)
    assert all(r["done"] for r in replies)
    during = [t for t in arrivals if began <= t <= ended]
    assert len(during) >= 3, (len(arrivals), ended - began)


def test_an_image_claiming_billions_of_pixels_is_refused_before_decoding(vision, http):
    r = http.post("/api/chat", json={"model": MODEL, "stream": False, "messages": [
        {"role": "user", "content": "hi", "images": [b64(png_claiming(60_000, 60_000))]}]})
    assert (r.status_code, r.json()) == (400, {"error": "image too large: 60000x60000 pixels (at most 40,000,000)"})


def test_raw_prompts_place_images_by_their_tags(vision, http):
    """In raw mode the prompt's own [img-N] tags place the images (none: in front); an image
    must be followed by some text, since its decode gives no logits to sample from."""
    tagged = generate(http, "<|im_start|>user\n[img-0] What color is this?<|im_end|>\n<|im_start|>assistant\n", [RED],
                      raw=True)
    untagged = generate(http, "<|im_start|>user\n What color is this?<|im_end|>\n<|im_start|>assistant\n", [RED],
                        raw=True)
    assert tagged["prompt_eval_count"] >= 16 and untagged["prompt_eval_count"] >= 16
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "Look: [img-0]", "raw": True,
                                         "images": [b64(RED)], "stream": False})
    assert (r.status_code, r.json()) == (400, {"error": "the prompt must not end with an image"})



def test_more_images_than_one_request_may_bring_are_refused(vision, http):
    r = http.post("/api/generate", json={"model": MODEL, "prompt": PROMPT, "images": [b64(RED)] * 33, "stream": False})
    assert (r.status_code, r.json()) == (400, {"error": "too many images: 33 (at most 32 in one request)"})
    assert generate(http, PROMPT, [RED] * 32, options={"num_predict": 1})["done"] is True
