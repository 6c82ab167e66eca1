#!/usr/bin/env python3
"""The host side of the test guest's network driver (guest/README.md, "Network"): an AF_PACKET
peer on a tap interface. It echoes the guest's test frames, counts everything, answers the
benchmark's requests and, on a command, probes a MAC address.

    net-peer.py IFACE          (run where the tap lives, e.g. ip netns exec NS net-peer.py tap0)

stdout, one line each:  peer ready mac=MAC  |  answer mac=MAC seq=N  |  stats echoed=.. ...
stdin commands:         probe MAC SEQ  |  stats  |  quit
"""
import os
import select
import socket
import struct
import sys
import time

ETHERTYPE = 0x88B5
MAGIC = 0x4E4D5650
HEAD = struct.Struct("<6s6s2sIB3xIHHI")  # struct tframe in guest/src/main/c/net.c
K_ECHO, K_REPLY, K_PROBE, K_ANSWER, K_BENCH_TX, K_BENCH_RX, K_BLAST, K_BLAST_END = range(1, 9)


def mac_str(b):
    return ":".join("%02x" % x for x in b)


def frame(dst, src, kind, seq, data=b"", length=None, csum=0):
    n = len(data) if length is None else length
    return HEAD.pack(dst, src, struct.pack(">H", ETHERTYPE), MAGIC, kind, seq, n, 0, csum) + data


def adler(data):
    a, b = 1, 0
    for x in data:
        a = (a + x) % 65521
        b = (b + a) % 65521
    return b << 16 | a


def main():
    iface = sys.argv[1]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    s.bind((iface, ETHERTYPE))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    me = s.getsockname()[4][:6]
    counts = dict(echoed=0, bench_rx=0, blasted=0, answers=0, other=0)
    print("peer ready mac=%s" % mac_str(me), flush=True)
    stdin = sys.stdin.fileno()
    poller = select.poll()
    poller.register(s, select.POLLIN)
    poller.register(stdin, select.POLLIN)
    buf = bytearray(65536)
    while True:
        for fd, _ in poller.poll(1000):
            if fd == stdin:
                line = sys.stdin.readline()
                if not line or line.strip() == "quit":
                    print("stats " + " ".join("%s=%d" % kv for kv in counts.items()), flush=True)
                    return
                words = line.split()
                if words and words[0] == "probe":
                    dst = bytes.fromhex(words[1].replace(":", ""))
                    seq = int(words[2])
                    data = bytes((seq + i) & 0xFF for i in range(64))
                    s.send(frame(dst, me, K_PROBE, seq, data, csum=adler(data)))
                elif words and words[0] == "stats":
                    print("stats " + " ".join("%s=%d" % kv for kv in counts.items()), flush=True)
                continue
            while True:
                try:
                    n = s.recv_into(buf, len(buf), socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if n < HEAD.size:
                    counts["other"] += 1
                    continue
                dst, src, _, magic, kind, seq, length, _, csum = HEAD.unpack_from(buf)
                if magic != MAGIC:
                    counts["other"] += 1
                elif kind == K_ECHO:
                    # The same bytes back, addressed to the sender, from us.
                    out = bytearray(buf[:n])
                    out[0:6] = src
                    out[6:12] = me
                    out[18] = K_REPLY
                    s.send(out)
                    counts["echoed"] += 1
                elif kind == K_BENCH_TX:
                    counts["bench_rx"] += 1
                    key = "bench_rx_%d" % n   # per frame size: each benchmark row has its own
                    counts[key] = counts.get(key, 0) + 1
                elif kind == K_ANSWER:
                    counts["answers"] += 1
                    print("answer mac=%s seq=%d" % (mac_str(src), seq), flush=True)
                elif kind == K_BLAST:
                    size = max(length, HEAD.size)
                    blast = bytes(frame(src, me, K_BENCH_RX, 0, bytes(size - HEAD.size)))
                    sent = 0
                    stop = time.monotonic() + seq / 1000.0
                    while time.monotonic() < stop:
                        for _ in range(64):
                            try:
                                s.send(blast)
                                sent += 1
                            except OSError:
                                pass  # the tap's queue is full: the guest is behind
                    # The end frame may meet a full tap queue: send it a few times (the guest takes the first).
                    for _ in range(10):
                        time.sleep(0.05)
                        try:
                            s.send(frame(src, me, K_BLAST_END, sent, length=length))
                        except OSError:
                            pass
                    counts["blasted"] += sent
                else:
                    counts["other"] += 1


if __name__ == "__main__":
    main()
