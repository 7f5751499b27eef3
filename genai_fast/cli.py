"""The `genai-fast` command.

    genai-fast info [--json]
    genai-fast bench [--device cpu|cuda] [--quick|--full] [--ops OP ...] [--json PATH] [--plot PATH]
    genai-fast word2vec {train,query,eval} ...   (genai_fast/word2vec/cli.py)
    genai-fast generate PROMPT [--model PATH] ...  (genai_fast/llm/cli.py)
    genai-fast chat [--model PATH] [--system TEXT] ...  (genai_fast/llm/chat.py)
    genai-fast diffusion {prepare,images,train,sample,invert,eval} ...  (genai_fast/diffusion/text2image/cli.py)

A user's mistake (bad argument, missing file, a backend that cannot run) is reported as one line on
stderr with exit status 2 and no traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genai_fast.backends.dispatch import BackendNotSupportedError

# FloatingPointError: training that diverged (a loss of NaN), which the user fixes with a lower --lr
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError,
               NotADirectoryError, BackendNotSupportedError, KeyError, NotImplementedError, FloatingPointError)


class UsageError(Exception):
    """A mistake in the command line; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + exits 2; keep that, one clean line
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genai-fast", description="Fast, reference-checked kernels for generative AI.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = sub.add_parser("info", help="every op x backend: available here, or why not")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    bench = sub.add_parser("bench", help="time every backend against its references (the main job)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="default: cuda when a GPU is present, else cpu")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="small shapes (the default on a CPU)")
    size.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="all shapes (the default on a GPU)")
    bench.add_argument("--ops", nargs="+", metavar="OP", help="only these ops (default: all registered)")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON (atomically)")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG of the speedups")
    bench.add_argument("--budget-s", type=float, metavar="SECONDS",
                       help="stop starting new cases after this many seconds (the rest are listed as skipped)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")

    from genai_fast.word2vec.cli import add_parser as add_word2vec_parser

    add_word2vec_parser(sub)
    from genai_fast.llm.cli import add_parser as add_generate_parser

    add_generate_parser(sub)
    from genai_fast.llm.chat import add_parser as add_chat_parser

    add_chat_parser(sub)
    from genai_fast.diffusion.text2image.cli import add_parser as add_diffusion_parser

    add_diffusion_parser(sub)
    return parser


def _cmd_info(args: argparse.Namespace) -> int:
    from genai_fast.info import info

    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v)
    print(f"genai_fast: {versions}")
    if data["forced_backend_error"]:
        print(f"warning: {data['forced_backend_error']}: every op call will fail until it is fixed or unset")
    elif data["forced_backend"]:
        print(f"GENAI_FAST_BACKEND={data['forced_backend']} forces that backend everywhere")
    width = max([len("op"), *(len(row["op"]) for row in data["ops"])])
    bwidth = max([len("backend"), *(len(row["backend"]) for row in data["ops"])])
    print(f"{'op':<{width}} {'backend':<{bwidth}} {'available':<10} {'devices':<10} {'dtypes':<34} why not")
    for row in data["ops"]:
        print(f"{row['op']:<{width}} {row['backend']:<{bwidth}} {'yes' if row['available'] else 'no':<10} "
              f"{','.join(row['devices']):<10} {','.join(row['dtypes']):<34} {'; '.join(row['reasons'])}")
    return 0


def _resolve_device(requested: str | None) -> Any:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False)")
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def _check_output_path(option: str, path: str | None) -> None:
    if path is None:
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {parent} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"{option} {path}: is a folder, expected a file path")
    try:  # before any work: a benchmark's results must not be lost at the end for want of a writable folder
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".genai-fast-probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write in {parent} ({exc.strerror or exc})") from None


def _cmd_bench(args: argparse.Namespace) -> int:
    device = _resolve_device(args.device)
    preset = args.preset or ("full" if device.type == "cuda" else "quick")
    _check_output_path("--json", args.json)
    _check_output_path("--plot", args.plot)
    from genai_fast.bench.runner import format_table, run_benchmarks, select_entries, write_json

    select_entries(args.ops)  # reject unknown op names before measuring anything
    if args.budget_s is not None and not args.budget_s > 0:  # NaN too: it would never stop anything
        raise UsageError(f"--budget-s: expected a positive number of seconds, got {args.budget_s}")
    checkpoint = (lambda partial: write_json(partial, args.json)) if args.json else None
    result = run_benchmarks(device, preset, args.ops, progress=not args.no_progress, budget_s=args.budget_s,
                            checkpoint=checkpoint)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        from genai_fast.bench.plot import plot_speedups

        plot_speedups(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_word2vec(args: argparse.Namespace) -> int:
    from genai_fast.word2vec.cli import run

    return run(args)


def _cmd_generate(args: argparse.Namespace) -> int:
    from genai_fast.llm.cli import run

    return run(args)


def _cmd_chat(args: argparse.Namespace) -> int:
    from genai_fast.llm.chat import run

    return run(args)


def _cmd_diffusion(args: argparse.Namespace) -> int:
    from genai_fast.diffusion.text2image.cli import run

    return run(args)


COMMANDS = {"info": _cmd_info, "bench": _cmd_bench, "word2vec": _cmd_word2vec, "generate": _cmd_generate,
            "chat": _cmd_chat, "diffusion": _cmd_diffusion}


def _take_debug(argv: list[str]) -> tuple[list[str], bool]:
    """--debug is accepted anywhere before a "--" (the error message tells users to add it, and they add it at
    the end, after the subcommand's arguments): (argv without it, whether it was there)."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return kept, len(kept) != len(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv, debug = _take_debug(list(sys.argv[1:] if argv is None else argv))
    try:
        args = _build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("genai-fast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`genai-fast info | head`): stop quietly, as Unix tools do. Point stdout at
        # devnull so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UsageError, *USER_ERRORS) as exc:
        if debug:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"genai-fast: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"genai-fast: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
