"""The command line's vocabulary: the parser, the modes, and one table of which option applies to which
mode. Exactly one mode per call; an option given to a mode it does not apply to is a usage error that
says which modes take it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# mode -> the flag that selects it ("run" is the default: --pack NN or --all without another mode)
MODES = ("list", "lint", "status", "report", "export", "merge", "bisect", "bundle", "provision", "run")
_RUNS = {"run", "bisect"}
_SELECT = {"run", "bundle", "provision"}
# option (argparse dest) -> the modes it applies to
APPLIES: dict[str, set[str]] = {
    "pack": _SELECT, "all": _SELECT,
    "check": {"run"}, "upstream": {"run", "bisect", "bundle"}, "source": {"run"}, "source_kind": {"run"},
    "cache_dir": {"run", "bisect", "bundle", "export"},
    "timeout": _RUNS, "keep": _RUNS, "interpreter": _RUNS | {"provision"},
    "docker": _RUNS, "run_dir": _RUNS, "strict": {"run", "merge"}, "jobs": {"run"}, "repeat": {"run"},
    "repeat_rtol": {"run"}, "compare": {"run", "merge"}, "json": _RUNS | {"merge"}, "junit": {"run", "merge"},
    "markdown": {"run", "merge"}, "receipt": {"run"}, "python": {"bundle", "export"}, "platform": {"bundle", "export"},
    "export_offline": {"export"},
    "bundle_ref": {"bundle"}, "bundle_bisect": {"bundle"}, "bundle_runtime": {"bundle"},
    "offline": _RUNS | {"provision"}, "bisect_from": {"bisect", "bundle"}, "bisect_jobs": {"bisect"},
    "env": _RUNS, "env_dir": _RUNS | {"bundle", "provision"}, "wheelhouse": {"provision"},
    "upstream_tests": {"run"}, "plots": {"run", "merge"}, "history": {"run", "merge"},
}


class _Help(argparse.HelpFormatter):
    """Shows a default where there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, [], argparse.SUPPRESS) \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _positive(kind: type, what: str):
    """An argparse type: a positive, finite number of this kind (0, negatives, nan and inf are refused)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} is not positive and finite (give more than 0)")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


positive_int = _positive(int, "a whole number")
positive_float = _positive(float, "a number")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message already)
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="runner.py", formatter_class=_Help,
        description="Show each pack's upstream bug at its pinned base, apply the patch to a fresh copy, "
        "show the fix, and print one verdict per pack. One mode per call: a run (--pack / --all), or --list, "
        "--lint, --status, --report, --export, --merge, --bisect, --bundle, --provision.",
    )
    what = p.add_argument_group("what to do")
    what.add_argument("--list", action="store_true", help="list the packs and their latest receipts")
    what.add_argument("--lint", action="store_true", help="check every pack's files, manifest, patch, README and stack")
    what.add_argument("--pack", action="append", default=[], metavar="NN", help="run this pack (repeatable)")
    what.add_argument("--all", action="store_true", help="run every pack")
    what.add_argument("--check", action="store_true",
                      help="CPU only: fetch sources and check the patch applies (contract packs: sources "
                      "only); no reproducer run")
    what.add_argument("--status", action="store_true", help="write STATUS.md from the committed receipts")
    what.add_argument("--report", metavar="NN", help="print the upstream issue body for this pack, in that "
                      "repository's own template")
    what.add_argument("--export", nargs=2, metavar=("NN", "DIR"),
                      help="write a self-contained folder for this pack to attach upstream")
    what.add_argument("--export-offline", action="store_true",
                      help="with --export: also carry the pinned checkouts and the locked wheels (without torch, "
                      "triton and the CUDA libraries) for --python, for a GPU node without network")
    what.add_argument("--merge", nargs="+", type=Path, metavar="RUN.json",
                      help="one report (--json/--junit/--markdown) from several runs' --json reports, each "
                      "pack from the one run that ran it (a nightly run in parts)")
    what.add_argument("--bisect", metavar="NN",
                      help="find the upstream commit between the pack's base and main (or --upstream REF) "
                      "where its reproducer stops (or starts) printing BUG_REPRODUCED")
    what.add_argument("--bisect-from", metavar="REF",
                      help="with --bisect or --bundle --bundle-bisect: start from this upstream ref instead of the "
                      "pinned base (a base on a release branch is no ancestor of main)")
    what.add_argument("--bisect-jobs", type=positive_int, default=1, metavar="J",
                      help="with --bisect: test J commits side by side per round (a (J+1)-ary search); for "
                      "reproducers that spend their time compiling, not for timed verdicts")
    what.add_argument("--provision", action="store_true",
                      help="make (or check) the locked environments of the selected packs' stacks, and stop")
    where = p.add_argument_group("which upstream code")
    where.add_argument("--upstream", metavar="REF", help="run against this git ref instead of the pinned base")
    where.add_argument("--source", type=Path, metavar="DIR",
                       help="use this local checkout (copied, never modified) instead of fetching")
    where.add_argument("--source-kind", choices=("auto", "git", "sdist"), default="auto",
                       help="auto: git, falling back to the release sdist when git cannot be reached")
    where.add_argument("--cache-dir", type=Path, default=None,
                       help="pristine source cache (default: $REPRO_CACHE_DIR or ~/.cache/upstream-repro)")
    how = p.add_argument_group("how to run")
    how.add_argument("--env", choices=("auto", "host"), default="auto",
                     help="auto: every stage in its stack's locked environment, provisioned once and reused; "
                     "host: the reproducers' interpreter as it is (you manage what it has)")
    how.add_argument("--env-dir", type=Path, default=None,
                     help="where environments and their unit store live (default: $REPRO_ENV_DIR or "
                     "<cache dir>/envs)")
    how.add_argument("--wheelhouse", type=Path, metavar="DIR",
                     help="with --provision: take the locked wheels from this folder, not the index (a container "
                     "build)")
    how.add_argument("--timeout", type=positive_int, metavar="S",
                     help="per-stage timeout in seconds (default: the pack's)")
    how.add_argument("--keep", action="store_true", help="keep the work copies after the run")
    how.add_argument("--interpreter", default=sys.executable,
                     help="Python for the reproducers (the base of their environments)")
    how.add_argument("--docker", action="store_true",
                     help="run the same command inside the image of the packs' stacks (docker/), with the GPU; "
                     "builds the image when its inputs changed (needs the docker extra and a Docker engine)")
    how.add_argument("--run-dir", type=Path, default=None, help="where logs go (default: runs/<timestamp>)")
    how.add_argument("--strict", action="store_true", help="count SKIPPED as unexpected in the exit code")
    how.add_argument("--jobs", type=positive_int, default=1, metavar="J",
                     help="run J packs side by side, longest first (they share the machine and its GPU; packs "
                     "whose verdict depends on timings, [run] exclusive, run alone afterwards); results say so")
    how.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                     help="run each pack N times; disagreeing runs make it FLAKY")
    how.add_argument("--repeat-rtol", type=positive_float, default=0.05, metavar="R",
                     help="with --repeat: relative tolerance on evidence numbers (timings are not compared)")
    how.add_argument("--compare", type=Path, metavar="PREV.json",
                     help="fail when a pack changed state since this earlier --json report")
    how.add_argument("--upstream-tests", action="store_true",
                     help="also run the upstream tests each pack names ([tests]) on its clean and patched trees")
    out = p.add_argument_group("outputs")
    out.add_argument("--json", type=Path, metavar="PATH", help="write results as JSON")
    out.add_argument("--junit", type=Path, metavar="PATH", help="write results as JUnit XML")
    out.add_argument("--markdown", type=Path, metavar="PATH", help="write a status table as markdown")
    out.add_argument("--plots", type=Path, metavar="DIR", help="with --markdown: draw the packs' figures into DIR "
                     "(needs matplotlib) and embed them")
    out.add_argument("--history", nargs="+", type=Path, metavar="RUN.json",
                     help="with --plots: earlier runs' --json reports (oldest first), drawn with this run as "
                     "verdicts per night in the markdown report")
    out.add_argument("--receipt", action="store_true", help="write evidence/<pack>.json for each run pack")
    off = p.add_argument_group("offline bundles (GPU nodes without network)")
    off.add_argument("--bundle", type=Path, metavar="DIR",
                     help="write an offline bundle for the selected packs (needs the package index)")
    off.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}", metavar="X.Y",
                     help="with --bundle or --export-offline: the node's Python version")
    off.add_argument("--platform", default="linux-x86_64", metavar="NAME",
                     help="with --bundle or --export-offline: the node's platform (a lock's platform name)")
    off.add_argument("--bundle-ref", action="append", default=[], metavar="REF",
                     help="with --bundle: also carry the sources at this upstream ref (repeatable)")
    off.add_argument("--bundle-runtime", action="store_true",
                     help="with --bundle: carry torch, triton and the CUDA libraries too (gigabytes), for a node "
                     "whose torch is not the locked build")
    off.add_argument("--offline", type=Path, metavar="DIR", help="run from a bundle made by --bundle, no network")
    off.add_argument("--bundle-bisect", action="store_true",
                     help="with --bundle: also carry each pack's first-parent history from its base (or "
                     "--bisect-from REF) to main (or --upstream REF), trimmed to [source].paths, for --bisect on "
                     "the node")
    return p


def mode_of(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(the one mode, problems): several modes, no mode, or options that do not apply to it."""
    chosen = [m for m in MODES[:-1] if getattr(args, m, None) not in (None, False, [])]
    if (args.pack or args.all) and not (set(chosen) & _SELECT):
        chosen.append("run")
    if len(chosen) > 1:
        return None, ["one mode per call, not " + " and ".join(f"--{m}" if m != "run" else "a run (--pack/--all)"
                                                                  for m in chosen)]
    if not chosen:
        return None, ["say what to do: --pack NN or --all, or one of --list, --lint, --status, --report, "
                      "--export, --merge, --bisect, --bundle, --provision"]
    mode = chosen[0]
    parser = build_parser()
    problems = []
    for action in parser._actions:
        dest = action.dest
        if dest not in APPLIES or dest == mode:
            continue
        value = getattr(args, dest, None)
        if value in (None, False, []) or value == action.default:
            continue
        if mode not in APPLIES[dest]:
            flag = max(action.option_strings, key=len)
            takes = ", ".join(sorted(f"--{m}" if m != "run" else "a run" for m in APPLIES[dest]))
            here = "a run" if mode == "run" else f"--{mode}"
            problems.append(f"{flag} does not apply to {here} (it goes with {takes})")
    if mode in ("bundle", "provision") and not (args.pack or args.all):
        problems.append(f"--{mode} needs the packs: --pack NN (repeatable) or --all")
    if args.pack and args.all:
        problems.append("--pack and --all together: name packs, or take all of them")
    return mode, problems
