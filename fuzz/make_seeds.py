#!/usr/bin/env python3
"""Writes the seed corpus of the dns_message fuzz target: small, real-shaped DNS
messages as stub resolvers send and servers answer them. Each file is one
selector byte (bit 0: TCP framing, bit 1: captured on egress) and the payload.
Run from the repository root: python3 fuzz/make_seeds.py"""
import os, struct

OUT = os.path.join(os.path.dirname(__file__), "corpus", "dns_message")

def name(text):
    out = b""
    for label in text.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"

def header(ident, flags, qd, an, ns, ar):
    return struct.pack(">HHHHHH", ident, flags, qd, an, ns, ar)

def question(qname, qtype):
    return name(qname) + struct.pack(">HH", qtype, 1)

def rr(owner, rtype, ttl, rdata):
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata

PTR = b"\xc0\x0c"  # the question name
OPT = b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)  # EDNS0, 1232-byte UDP payload

def query(ident, qname, qtype, edns=True):
    return header(ident, 0x0100, 1, 0, 0, 1 if edns else 0) + question(qname, qtype) + (OPT if edns else b"")

def answer(ident, qname, qtype, rcode, answers, authority=b"", ns=0):
    return header(ident, 0x8180 | rcode, 1, len(answers), ns, 0) + question(qname, qtype) + b"".join(answers) + authority

SOA = rr(name("example.com"), 6, 300, name("ns1.example.com") + name("hostmaster.example.com") + struct.pack(">IIIII", 1, 7200, 900, 1209600, 300))

seeds = {
    "query-a-edns": (2, query(0x1a2b, "api.openai.com", 1)),
    "query-aaaa": (2, query(0x1a2c, "api.openai.com", 28, edns=False)),
    "answer-a": (0, answer(0x1a2b, "api.example.com", 1, 0, [rr(PTR, 1, 60, bytes([203, 0, 113, 20]))])),
    "answer-aaaa": (0, answer(0x1a2c, "api.example.com", 28, 0, [rr(PTR, 28, 60, bytes.fromhex("20010db8020301130000000000000020"))])),
    "answer-cname-chain": (0, answer(7, "www.example.com", 1, 0, [
        rr(PTR, 5, 300, name("edge.cdn.example.net")),
        rr(b"\xc0\x2d", 1, 20, bytes([203, 0, 113, 21])),
        rr(b"\xc0\x2d", 1, 20, bytes([203, 0, 113, 22])),
    ])),
    "answer-nxdomain-soa": (0, answer(9, "exfil.attacker.example.com", 1, 3, [], SOA, 1)),
    "answer-refused": (0, answer(10, "blocked.example.com", 1, 5, [])),
    "answer-servfail": (0, answer(11, "broken.example.com", 28, 2, [])),
    "tcp-query": (3, b""),
    "tcp-answer": (1, b""),
    "answer-pointer-loop": (0, header(12, 0x8180, 1, 1, 0, 0) + question("x.example", 1) + rr(b"\xc0\x1b", 1, 1, b"\0\0\0\0")),
}
tcp_query = query(0x2222, "big.example.com", 1)
seeds["tcp-query"] = (3, struct.pack(">H", len(tcp_query)) + tcp_query)
tcp_answer = answer(0x2222, "big.example.com", 1, 0, [rr(PTR, 1, 30, bytes([203, 0, 113, i])) for i in range(1, 40)])
seeds["tcp-answer"] = (1, struct.pack(">H", len(tcp_answer)) + tcp_answer[:510])

os.makedirs(OUT, exist_ok=True)
for label, (selector, payload) in seeds.items():
    with open(os.path.join(OUT, label), "wb") as f:
        f.write(bytes([selector]) + payload)
print(f"{len(seeds)} seeds in {OUT}")
