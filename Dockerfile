# Reproduces CI: Debian bookworm, Node 20, Xen's development files; runs the tests.
#   docker build -t xen-vchan . && docker run --rm xen-vchan
FROM debian:bookworm
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates curl gnupg build-essential python3 pkg-config \
      libxen-dev xen-utils-4.17 xenstore-utils nodejs npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
COPY . .
RUN npm ci --no-audit --no-fund
CMD ["npm", "test"]
