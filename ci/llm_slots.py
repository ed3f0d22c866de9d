#!/usr/bin/env python3
"""Drives an OpenAI-compatible chat server the way the stack's responders do and prints
one line of figures: replies/s, generated tokens/s, time to first token and reply time.

    ci/llm_slots.py --url http://127.0.0.1:8080 --concurrency 4 --requests 24 --max-tokens 32

Each request carries a prompt shaped like the responder's in the README's load test
(handlers/src/responder/prompt.rs): the default system prompt, four recalled memories,
six recent turns and the new message, all different per request (as the load test's
conversations are) so a slot's prompt cache only ever reuses the shared system prompt.
`--concurrency` requests are kept in flight (closed loop); ci/bench.sh runs it once per
llama-server slot/thread setting. Only the standard library: it runs wherever ci/ does.
"""

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request

SYSTEM = "You are a helpful, concise assistant. Use what you remember about the user when it helps."
# What SmolLM2 answered in the load test (32-token replies), to fill recalled turns.
REPLY = ("Sure! Here is one short sentence about message {m} of conversation {c}: it is a "
         "friendly note that keeps the conversation going.")
MESSAGE = "Message {m} of conversation {c}: reply with one short sentence."


def prompt(i):
    c, m = i % 12 + 1, i // 12 + 4
    memories = []
    for k in range(4):
        oc, om = (c + k + 1) % 12 + 1, m - 1 - k % 2
        memories.append(f"- The user said: {MESSAGE.format(m=om, c=oc)}" if k % 2 == 0
                        else f"- You said: {REPLY.format(m=om, c=oc)}")
    system = SYSTEM + "\n\nWhat you remember from earlier conversations with this user:\n" + "\n".join(memories)
    messages = [{"role": "system", "content": system}]
    for t in range(m - 3, m):
        messages.append({"role": "user", "content": MESSAGE.format(m=t, c=c)})
        messages.append({"role": "assistant", "content": REPLY.format(m=t, c=c)})
    messages.append({"role": "user", "content": MESSAGE.format(m=m, c=c)})
    return messages


def one(url, i, max_tokens, timeout):
    body = json.dumps({"model": "smollm2", "messages": prompt(i), "max_tokens": max_tokens,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    start = time.monotonic()
    first = None
    usage = {}
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                if first is None and choice.get("delta", {}).get("content"):
                    first = time.monotonic() - start
    total = time.monotonic() - start
    return first if first is not None else total, total, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    # One warm-up request loads the weights into the page cache and the caches.
    one(args.url, 10_000, args.max_tokens, args.timeout)
    results, errors, lock = [], [], threading.Lock()
    next_i = iter(range(args.requests))

    def worker():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            try:
                r = one(args.url, i, args.max_tokens, args.timeout)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - reported, not raised: one line per run
                with lock:
                    errors.append(str(e))

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    if not results:
        print(f"{args.label} no replies; errors: {errors[:3]}")
        sys.exit(1)
    ttft = [r[0] for r in results]
    total = [r[1] for r in results]
    gen = sum(r[3] for r in results)
    print(f"{args.label} conc={args.concurrency} replies={len(results)} errors={len(errors)} "
          f"prompt_tok={statistics.mean(r[2] for r in results):.0f} "
          f"gen_tok/reply={gen / len(results):.1f} | replies/s={len(results) / wall:.2f} "
          f"gen_tok/s={gen / wall:.1f} | ttft p50={pct(ttft, 50):.2f}s p90={pct(ttft, 90):.2f}s "
          f"| reply p50={pct(total, 50):.2f}s p90={pct(total, 90):.2f}s", flush=True)


if __name__ == "__main__":
    main()
