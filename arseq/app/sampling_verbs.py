"""`arseq generate` and `arseq evaluate`: the model is loaded first, since its modality adds options."""

from __future__ import annotations

import sys

from arseq import limits
from arseq.app import generation, options
from arseq.artifacts import checkpoint
from arseq.errors import DataError
from arseq.outputs import claimed, to_json


def run_sampling_verb(verb: str, argv: list[str]) -> int:
    pre = options.early(argv)
    if not pre.get("checkpoint"):
        if pre["help"]:
            options.parser(verb, None).print_help()
            print("\nWith --checkpoint, --help also lists the options of the checkpoint's modality.")
            return 0
        raise DataError("--checkpoint is required")
    loaded = checkpoint.load(pre["checkpoint"], pre.get("modality"), bool(pre.get("trust_modality_import")))
    opts = loaded.modality.generate_options
    parser = options.parser(verb, opts)
    if pre["help"]:
        parser.print_help()
        return 0
    call = options.to_call(options.parse(parser, argv, options.kinds(opts)), opts)
    limits.check_call(loaded, call, verb)
    if verb == "evaluate":
        with checkpoint.stored_data(loaded, call.data_paths):
            result = generation.run_evaluate(loaded, call.request, call.run, call.data_paths, call.stride)
        print(to_json(result, indent=1))  # NaN (e.g. no token to predict) is null: the output stays JSON
        return 0
    with claimed(call.request.out):  # a second run into this --out refuses instead of replacing our files
        _, written = generation.run_generate(loaded, call.request, call.run, echo=_stdout)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    if call.request.out is None:
        print("nothing written: --out PATH writes the samples as files", file=sys.stderr)
    return 0


def _stdout(text: str) -> None:
    """The samples without --out: the verb's result, on stdout as it comes."""
    sys.stdout.write(text)
    sys.stdout.flush()


def run_generate(argv: list[str]) -> int:
    return run_sampling_verb("generate", argv)


def run_evaluate(argv: list[str]) -> int:
    return run_sampling_verb("evaluate", argv)
