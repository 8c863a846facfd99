# tapwall in a container. Two stages: a toolchain stage that builds the native
# modules (cap needs libpcap's headers, the addon libyaml's; node-gyp needs g++, make, python3) and
# the TypeScript, and a slim runtime stage with only libpcap's and libyaml's runtime libraries.
#
# The same steps as the README's set-up (scripts/setup.sh): Debian packages,
# then `npm ci`, which builds the native modules (cap, raw-socket, and our own
# addon in native-bindings/, linked as the tapwall-native package) and whose
# `prepare` script compiles the TypeScript.
#
# Run time: attaching to vNICs needs CAP_NET_ADMIN (TUNSETIFF, link changes)
# and CAP_NET_RAW (AF_PACKET, raw sockets), the TUN device, and the host's
# network namespace, where the VMs' TAP interfaces live:
#   docker run --network host --cap-add NET_ADMIN --cap-add NET_RAW \
#     --device /dev/net/tun -v /etc/tapwall:/etc/tapwall -v tapwall-state:/var/lib/tapwall \
#     -v /run/tapwall:/run/tapwall tapwall run --config /etc/tapwall/policy.yaml
# (/etc/tapwall read-write if the API may replace the policy: PUT /v1/policy writes the file;
# read-only, such a PUT is refused with 503 and nothing changes.)
# In a cluster, the policy comes from etcd instead of a file:
#   ... tapwall run --store etcd://10.1.0.5:2379,10.1.0.6:2379 --host "$(hostname -s)" --uplink eth1
#   (add -v /etc/tapwall/pki:/etc/tapwall/pki:ro and --etcd-ca/--etcd-cert/--etcd-key for TLS).
# The process runs as the unprivileged `node` user; the two capabilities reach
# it through file capabilities on the node binary (setcap below), and only if
# the container is granted them with --cap-add. Commands that only read a
# policy (check, trace, compile, bench classify) need none of this.

FROM node:20-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap-dev libyaml-dev g++ make python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
COPY native-bindings ./native-bindings
COPY bin ./bin
COPY src ./src
COPY tools ./tools
COPY bench ./bench
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:20-bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap0.8 libyaml-0-2 iproute2 libcap2-bin \
 && setcap cap_net_admin,cap_net_raw+ep "$(readlink -f "$(command -v node)")" \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tapwall
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/native-bindings ./native-bindings
COPY --from=build /src/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY examples ./examples
COPY data ./data
# Run-time tags and the audit log (keep them on a volume: a quarantine must survive a restart), and the API socket.
RUN mkdir -p /var/lib/tapwall /run/tapwall && chown node:node /var/lib/tapwall /run/tapwall
VOLUME ["/var/lib/tapwall"]
USER node
ENTRYPOINT ["node", "/opt/tapwall/bin/tapwall.js"]
CMD ["--help"]
