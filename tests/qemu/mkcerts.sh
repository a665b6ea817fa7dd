#!/bin/sh
# mkcerts.sh DIR [NAME...] — a throw-away CA plus server and client
# certificates for QEMU's tls-creds-x509 (dir=DIR holds ca-cert.pem,
# server-cert.pem, server-key.pem, client-cert.pem, client-key.pem), made
# with certtool (gnutls-bin). The server certificate names localhost,
# 127.0.0.1 and each NAME (a host name, or an IPv4 address).
set -eu
dir=${1:?usage: mkcerts.sh DIR [NAME...]}
shift
mkdir -p "$dir"
cd "$dir"
cat > ca.info <<'T'
cn = rekeyguard qemu-smoke CA
ca
cert_signing_key
expiration_days = 7
T
cat > server.info <<'T'
organization = rekeyguard qemu-smoke
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 7
T
for name in "$@"; do
	case $name in
	*[!0-9.]*) echo "dns_name = $name" ;;
	*) echo "ip_address = $name" ;;
	esac
done >> server.info
cat > client.info <<'T'
organization = rekeyguard qemu-smoke
cn = rekeyguard-qemu-smoke-client
tls_www_client
encryption_key
signing_key
expiration_days = 7
T
q() { certtool "$@" >/dev/null 2>&1 || { echo "rekeyguard: certtool $* failed" >&2; certtool "$@" >&2; exit 1; }; }
q --generate-privkey --key-type=rsa --bits=2048 --outfile ca-key.pem
q --generate-self-signed --load-privkey ca-key.pem --template ca.info --outfile ca-cert.pem
for who in server client; do
	q --generate-privkey --key-type=rsa --bits=2048 --outfile "$who-key.pem"
	q --generate-certificate --load-privkey "$who-key.pem" --load-ca-certificate ca-cert.pem \
	  --load-ca-privkey ca-key.pem --template "$who.info" --outfile "$who-cert.pem"
done
chmod 0600 ./*-key.pem
rm -f ca.info server.info client.info
