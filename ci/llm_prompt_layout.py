#!/usr/bin/env python3
"""Prompt tokens an OpenAI-compatible chat server reads for multi-turn conversations,
with the recalled memories in the system prompt ("old", handlers/src/responder/prompt.rs)
or in front of the new message ("new": tried in issue 18's third round and reverted,
the local model stopped using memories placed there; docs/PERFORMANCE.md).

    ci/llm_prompt_layout.py --url http://127.0.0.1:8080 --layout new

8 conversations x 6 turns, asked in turn (so they share the server's slots), each
message with 4 memories drawn at random and the conversation's last 6 turns, 32-token
replies. Prints the prompt tokens the server read (its `timings.prompt_n`, after its
prompt cache) and the time it took, the reply tokens and their decode time, and the
wall time of the 48 requests (`ci/bench.sh llm-quant` compares models with it). Only
the standard library.
"""
import argparse
import json
import random
import time
import urllib.request

SYSTEM = "You are a helpful, concise assistant. Use what you remember about the user when it helps."
HEADING = "What you remember from earlier conversations with this user:"
FACTS = [f"I {verb} {thing}." for verb in ("like", "own", "visited", "bake", "study")
         for thing in ("tomatoes", "a red bicycle", "Oslo in June", "sourdough bread", "Rust and Kafka", "two cats")]


def ask(url, messages):
    body = json.dumps({"model": "smollm2", "messages": messages, "max_tokens": 32, "temperature": 0}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        reply = json.load(response)
    return reply["timings"], reply["choices"][0]["message"]["content"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--layout", choices=["old", "new"], required=True)
    args = parser.parse_args()
    random.seed(1)  # the same memories for both layouts
    history = {c: [] for c in range(8)}
    tokens = ms = decoded = decode_ms = 0
    started = time.monotonic()
    for turn in range(6):
        for c in range(8):
            memories = "".join(f"\n- The user said: {fact}" for fact in random.sample(FACTS, 4))
            text = f"Turn {turn} of conversation {c}: what should I do this weekend?"
            if args.layout == "old":
                messages = [{"role": "system", "content": f"{SYSTEM}\n\n{HEADING}{memories}"}, *history[c],
                            {"role": "user", "content": text}]
            else:
                messages = [{"role": "system", "content": SYSTEM}, *history[c],
                            {"role": "user", "content": f"[{HEADING}{memories}]\n\n{text}"}]
            timings, reply = ask(args.url, messages)
            tokens += timings["prompt_n"]
            ms += timings["prompt_ms"]
            decoded += timings["predicted_n"]
            decode_ms += timings["predicted_ms"]
            history[c] = (history[c] + [{"role": "user", "content": text},
                                        {"role": "assistant", "content": reply}])[-6:]
    print(f"prompt layout {args.layout}: 48 requests (8 conversations x 6 turns, 4 memories each, "
          f"last 6 turns kept): prompt tokens read {tokens}, prompt time {ms / 1000:.1f} s "
          f"({tokens / ms * 1000:.0f}/s); reply tokens {decoded}, decode time {decode_ms / 1000:.1f} s "
          f"({decoded / decode_ms * 1000:.0f}/s); wall time {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
