"""The `litgpt_lite` command line: one table from command name to the function that runs it.

Each function is imported only when its command runs, so `litgpt_lite download list` never imports torch.
jsonargparse builds the parser from the function's signature and docstring, and adds `--config file.yaml`.
"""

import importlib
import sys

COMMANDS: dict[str, str] = {
    "download": "litgpt_lite.download:download",
    "convert_to_litgpt": "litgpt_lite.convert:convert_to_litgpt",
    "convert_from_litgpt": "litgpt_lite.convert:convert_from_litgpt",
    "pretrain": "litgpt_lite.train.pretrain:pretrain",
    "finetune_full": "litgpt_lite.train.finetune:finetune_full",
    "finetune_lora": "litgpt_lite.train.finetune:finetune_lora",
    "finetune": "litgpt_lite.train.finetune:finetune_lora",
    "finetune_dpo": "litgpt_lite.train.dpo:finetune_dpo",
    "merge_lora": "litgpt_lite.merge_lora:merge_lora_cli",
    "generate": "litgpt_lite.generate_cli:generate",
    "chat": "litgpt_lite.chat:chat",
    "serve": "litgpt_lite.serve:serve",
    "evaluate": "litgpt_lite.evaluate:evaluate",
    "quantize": "litgpt_lite.quantize_cli:quantize_cli",
    "plot": "litgpt_lite.train.plot:plot",
    "prepare_code": "extensions.code_corpus.pipeline:prepare_code",
}


def _usage() -> str:
    names = "\n".join(f"  {name}" for name in COMMANDS)
    return f"usage: litgpt_lite <command> [args] [--config file.yaml]\n\ncommands:\n{names}\n"


def _load(target: str):
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"error: unknown command {command!r}.{hint} Run `litgpt_lite --help` for the list.", file=sys.stderr)
        return 2

    from litgpt_lite.errors import UserError

    try:
        func = _load(COMMANDS[command])
        from jsonargparse import CLI

        CLI(func, args=args, as_positional=True, prog=f"litgpt_lite {command}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
