# Stand-in for registry:2 (CNCF Distribution): `registry serve /etc/docker/registry/config.yml`,
# storage in /var/lib/registry, port 5000, busybox-style wget for the health probe.
ARG BASE_IMAGE=debian:12.11-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry wget \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && ln -s /usr/bin/docker-registry /usr/local/bin/registry \
 && mkdir -p /etc/docker/registry /var/lib/registry \
 && printf '%s\n' 'version: 0.1' 'log: {fields: {service: registry}}' \
      'storage: {cache: {blobdescriptor: inmemory}, filesystem: {rootdirectory: /var/lib/registry}}' \
      'http: {addr: ":5000", headers: {X-Content-Type-Options: [nosniff]}}' \
      > /etc/docker/registry/config.yml
VOLUME ["/var/lib/registry"]
EXPOSE 5000
ENTRYPOINT ["registry"]
CMD ["serve", "/etc/docker/registry/config.yml"]
