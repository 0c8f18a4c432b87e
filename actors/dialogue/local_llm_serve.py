"""The local LLM's server process: llama.cpp's own HTTP server, from the `xllamacpp` wheel.

`LocalLLMServer` runs this module as a child interpreter (`python -m actors.dialogue.local_llm_serve
…`), so the model's memory and threads live outside vagent's process, a crash of the model
cannot take vagent down, and every caller reaches it the same way as any OpenAI-compatible
provider: HTTP on loopback. It serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m actors.dialogue.local_llm_serve")
    parser.add_argument("--model", required=True, help="the .gguf file")
    parser.add_argument("--alias", required=True, help="the model name requests and answers use")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--parallel", type=int, default=4, help="requests decoded together")
    parser.add_argument("--max-tokens", type=int, default=512, help="the cap when a request sets none")
    parser.add_argument("--chat-template-file", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Blocked before any thread exists (the library may start some as it loads; threads
    # inherit the mask), then taken by sigwait: a handler would run only if the kernel
    # happened to pick the main thread, and a SIGTERM landing on one of llama.cpp's threads
    # would leave the main thread asleep for good (a `vagent up` killed with SIGKILL then
    # left the model running).
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    import xllamacpp  # here, not at the top: `--help` works without loading 100 MB of library

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.use_jinja = True  # the gguf's template, which renders tools
    params.n_ctx = args.context
    # llama-server's own defaults for a shared server: several slots over one unified KV
    # cache, so concurrent sessions are batched instead of queued.
    params.n_parallel = args.parallel
    params.kv_unified = True
    params.n_predict = args.max_tokens
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.offline = True  # never reach for the network
    params.ui = False
    if args.chat_template_file:
        with open(args.chat_template_file, encoding="utf-8") as f:
            params.chat_template = f.read()

    server = xllamacpp.Server(params)  # loads the model, then listens; raises if it cannot
    print(f"vagent: serving {args.alias} at {server.listening_address}", file=sys.stderr, flush=True)
    signal.sigwait(stop_signals)
    # Nothing to flush: skip the server's teardown, which joins its HTTP threads slowly.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
