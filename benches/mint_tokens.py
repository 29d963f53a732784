#!/usr/bin/env python3
"""Keys and JWTs for the auth-sidecar benchmarks (benches/run.sh, benches/memory.sh).

Usage:
  mint_tokens.py OUT_DIR [--iss ISS] [--aud AUD] [--sub SUB]
                 [--distinct N] [--distinct-algs hs256,rs256] [--distinct-ttl SECONDS]
                 [--distinct-name NAME]

Keys are created once per OUT_DIR and reused by later calls (so a second call can add
short-lived tokens signed with the same keys). Writes:
  hs256.secret              64 ASCII bytes (HMAC key, used as raw bytes)
  rs256.priv.pem            RSA-2048 private key (PKCS#8)
  rs256.pub.pem             matching SubjectPublicKeyInfo PEM (sidecar public_keys, HAProxy)
  jwks.hs256.json           JWKS with the oct key hs1 (Envoy HS256)
  jwks.rs256.json           JWKS with the RSA key rs1 (Envoy RS256)
  token.hs256, token.rs256  valid (sub, iat, exp = now + 3 h, iss, aud), kid hs1 / rs1
  token.{hs256,rs256}.{badsig,expired,wrongaud}, token.algconfusion, token.none
  tokens.<NAME>.<alg>.txt   with --distinct N: N distinct valid tokens, one per line,
                            sub = user-<i>, jti = <i>, exp = now + --distinct-ttl
  claims.env                ISSUER=, AUDIENCE=, SUB=

HS256 needs only the standard library. RS256 uses the `cryptography` package when it
is importable (about 1 ms per signature; run.sh installs it with pip when missing), and
otherwise a pure-Python RSA signer (about 20 ms per signature: fine for a few tokens,
slow for thousands). Large batches are signed on all cores.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import time
from multiprocessing import Pool


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def seg(obj) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def openssl(*args, data=None) -> bytes:
    return subprocess.run(["openssl", *args], input=data, check=True,
                          capture_output=True).stdout


def sign_hs256(secret: bytes, header, payload) -> str:
    si = f"{seg(header)}.{seg(payload)}"
    mac = hmac.new(secret, si.encode(), hashlib.sha256).digest()
    return f"{si}.{b64u(mac)}"


# ------------------------------------------------------------------ RSA signing
# DER prefix of DigestInfo(SHA-256) for EMSA-PKCS1-v1_5 (RFC 8017 §9.2, note 1).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


class PurePythonRsa:
    """RSASSA-PKCS1-v1_5 / SHA-256 with the CRT numbers read by the openssl CLI."""

    def __init__(self, pem_path: str):
        text = openssl("pkey", "-in", pem_path, "-noout", "-text").decode()
        nums = {}
        for name in ("modulus", "privateExponent", "prime1", "prime2", "exponent1",
                     "exponent2", "coefficient"):
            m = re.search(name + r":\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
            nums[name] = int(re.sub(r"[\s:]", "", m.group(1)), 16)
        self.n, self.p, self.q = nums["modulus"], nums["prime1"], nums["prime2"]
        self.dp, self.dq, self.qi = nums["exponent1"], nums["exponent2"], nums["coefficient"]
        self.k = (self.n.bit_length() + 7) // 8

    def sign(self, data: bytes) -> bytes:
        t = SHA256_DIGEST_INFO + hashlib.sha256(data).digest()
        em = b"\x00\x01" + b"\xff" * (self.k - len(t) - 3) + b"\x00" + t
        m = int.from_bytes(em, "big")
        s1, s2 = pow(m, self.dp, self.p), pow(m, self.dq, self.q)
        s = s2 + ((self.qi * (s1 - s2)) % self.p) * self.q
        return s.to_bytes(self.k, "big")


class CryptographyRsa:
    def __init__(self, pem_path: str):
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
        with open(pem_path, "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), None)
        self.args = (padding.PKCS1v15(), hashes.SHA256())

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, *self.args)


def rsa_signer(pem_path: str):
    try:
        return CryptographyRsa(pem_path)
    except ImportError:
        return PurePythonRsa(pem_path)


def sign_rs256(signer, header, payload) -> str:
    si = f"{seg(header)}.{seg(payload)}"
    return f"{si}.{b64u(signer.sign(si.encode()))}"


# ------------------------------------------------------------------ batches
_W = {}


def _init_worker(alg, key_material, header):
    _W["alg"], _W["header"] = alg, header
    _W["key"] = rsa_signer(key_material) if alg == "rs256" else key_material


def _mint_one(payload):
    if _W["alg"] == "rs256":
        return sign_rs256(_W["key"], _W["header"], payload)
    return sign_hs256(_W["key"], _W["header"], payload)


def mint_many(alg, key_material, header, payloads):
    procs = os.cpu_count() or 1
    if len(payloads) < 2000 or procs == 1:
        _init_worker(alg, key_material, header)
        return [_mint_one(p) for p in payloads]
    with Pool(procs, _init_worker, (alg, key_material, header)) as pool:
        return pool.map(_mint_one, payloads, chunksize=500)


def rsa_jwk(pub_pem_path: str, kid: str):
    out = openssl("rsa", "-pubin", "-in", pub_pem_path, "-noout", "-modulus")
    n = bytes.fromhex(out.decode().strip().split("=", 1)[1])
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64u(n), "e": "AQAB"}


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--iss", default="https://issuer.bench.local")
    ap.add_argument("--aud", default="bench-api")
    ap.add_argument("--sub", default="user-42")
    ap.add_argument("--distinct", type=int, default=0)
    ap.add_argument("--distinct-algs", default="hs256,rs256")
    ap.add_argument("--distinct-ttl", type=int, default=3 * 3600)
    ap.add_argument("--distinct-name", default="distinct")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    p = lambda name: os.path.join(a.out, name)

    if not os.path.exists(p("rs256.pub.pem")):
        write(p("hs256.secret"), secrets.token_hex(32))  # 64 ASCII chars = 64 key bytes
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                "-out", p("rs256.priv.pem"))
        openssl("pkey", "-in", p("rs256.priv.pem"), "-pubout", "-out", p("rs256.pub.pem"))
        fresh = True
    else:
        fresh = False
    secret = open(p("hs256.secret"), "rb").read()
    hh = {"alg": "HS256", "typ": "JWT", "kid": "hs1"}
    rh = {"alg": "RS256", "typ": "JWT", "kid": "rs1"}
    now = int(time.time())

    if fresh:
        oct_jwk = {"kty": "oct", "kid": "hs1", "alg": "HS256", "use": "sig", "k": b64u(secret)}
        rs_jwk = rsa_jwk(p("rs256.pub.pem"), "rs1")
        write(p("jwks.hs256.json"), json.dumps({"keys": [oct_jwk]}))
        write(p("jwks.rs256.json"), json.dumps({"keys": [rs_jwk]}))
        signer = rsa_signer(p("rs256.priv.pem"))
        other = p("other.priv.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", other)
        other_signer = rsa_signer(other)
        claims = {"sub": a.sub, "iat": now, "exp": now + 3 * 3600, "iss": a.iss, "aud": a.aud}
        expired = dict(claims, iat=now - 7200, exp=now - 600)
        wrongaud = dict(claims, aud="someone-else")
        toks = {
            "token.hs256": sign_hs256(secret, hh, claims),
            "token.hs256.badsig": sign_hs256(b"not-the-secret-not-the-secret-xx", hh, claims),
            "token.hs256.expired": sign_hs256(secret, hh, expired),
            "token.hs256.wrongaud": sign_hs256(secret, hh, wrongaud),
            "token.rs256": sign_rs256(signer, rh, claims),
            "token.rs256.badsig": sign_rs256(other_signer, rh, claims),
            "token.rs256.expired": sign_rs256(signer, rh, expired),
            "token.rs256.wrongaud": sign_rs256(signer, rh, wrongaud),
            # HS256 keyed with the RSA public key PEM (alg confusion), and alg=none.
            "token.algconfusion": sign_hs256(open(p("rs256.pub.pem"), "rb").read(),
                                             {"alg": "HS256", "typ": "JWT", "kid": "rs1"}, claims),
            "token.none": f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(claims)}.",
        }
        for name, tok in toks.items():
            write(p(name), tok)
        write(p("claims.env"), f"ISSUER='{a.iss}'\nAUDIENCE='{a.aud}'\nSUB='{a.sub}'\n")

    if a.distinct > 0:
        exp = now + a.distinct_ttl
        payloads = [{"sub": f"user-{i}", "jti": str(i), "iat": now, "exp": exp,
                     "iss": a.iss, "aud": a.aud} for i in range(a.distinct)]
        for alg in filter(None, a.distinct_algs.split(",")):
            t0 = time.time()
            if alg == "hs256":
                toks = mint_many("hs256", secret, hh, payloads)
            elif alg == "rs256":
                toks = mint_many("rs256", p("rs256.priv.pem"), rh, payloads)
            else:
                sys.exit(f"unknown algorithm {alg}")
            out = p(f"tokens.{a.distinct_name}.{alg}.txt")
            write(out, "\n".join(toks) + "\n")
            print(f"minted {len(toks)} {alg} tokens (exp {exp}) in {time.time() - t0:.1f}s -> {out}",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
