"""Every setting of `cllm agent`, `cllm train` and `cllm crawl`, written once in SETTINGS.

Each row says a setting's name, default, type, help, check, which commands take it as a flag
and which settings dataclass holds it. From the table come
- the click options of a command and the resolution of its values from flags, the
  environment (`CLLM_<NAME>`) and TOML files: agent/resolve.py;
- the dataclasses TrainerSettings (the continuous trainer), AgentConfig (the daemon) and
  CrawlSettings (`cllm crawl`), whose checks are the table's (here).

Adding a setting is one Setting(...) row: give it `commands` for a flag (and its CLLM_*
variable and TOML key) and `into` for the dataclass field the code reads. Renaming one keeps
the old name in `old_name`: its flag (hidden), variable and key still work, with a warning.

This module only describes settings; it reads and starts nothing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from agent.inputs.ingest import Ingestor
from agent.inputs.paths import DEFAULT_EXCLUDES, PrivateRules
from agent.inputs.text import DEFAULT_MAX_FILE_BYTES
from agent.web.fetch import MAX_BODY_BYTES
from agent.web.html import MAX_LINKS
from engine import PRESETS, TrainConfig
from engine.config import parse_arch
from engine.errors import ConfigError
from engine.priority import PRIORITIES

INITS = ("normal", "lattice")          # embedding initialisations of a new model
OPTIMIZERS = ("adamw", "muon")
# a new data directory's optimizer, --optimizer unset: Muon on the hidden matrices (AdamW on
# the rest), at 16 sequences a step, won the recipe sweep at equal wall time (2.9% fewer
# held-out bits per byte than AdamW at 8 at 90 s; docs/benchmarks.md, "The recipe sweep")
NEW_OPTIMIZER = "muon"
# engine.schedule kinds (benchmarks/bench_recipe.py, docs/benchmarks.md)
SCHEDULES = ("rsqrt", "constant", "wsd", "cosine")

# a check returns what is wrong with a value (None: nothing); "{flag}" names the setting's flag
Check = Callable[[Any], Optional[str]]


# The architecture of a new data directory's model: relu^2, rotary positions and an untied
# head, what won the recipe sweep among what llama.cpp's nemotron graph computes (4.5% fewer
# held-out bits per byte than GPT-2's block at 90 s, and faster; docs/benchmarks.md, "The
# recipe sweep"). QK-norm (no llama.cpp graph with LayerNorm has it) and zero-initialised
# projections (they lost) stay options. Older data directories keep what their checkpoints
# record.
DEFAULT_ARCH = "mlp=relu2,pos=rope,tie_head=false"


def _arch_problem(value) -> Optional[str]:
    try:
        parse_arch(value or "")
    except ValueError as e:
        return f"{{flag}}: {e}"
    return None


def at_least(low, *, strict: bool = False) -> Check:
    """value >= low (value > low if strict); None (unset) passes."""
    def check(v):
        if v is None or (v > low if strict else v >= low):
            return None
        return f"{{flag}} must be {'>' if strict else '>='} {low}"
    return check


@dataclass(frozen=True)
class Setting:
    name: str                  # field name; the flag --name-with-dashes, $CLLM_NAME, TOML key
    default: Any               # the dataclass field's default, and the flag's unless overridden
    type: type                 # int, float, str, bool (a --x/--no-x flag) or list (repeatable)
    help: str                  # the help adds "[default: ...]"
    check: Optional[Check] = None
    hint: Optional[str] = None  # how to fix a value the check refuses
    commands: tuple[str, ...] = ()   # commands with a flag for it (none: dataclass-only)
    command_defaults: Mapping[str, Any] = field(default_factory=dict)  # per-command default
    into: tuple[str, ...] = ()  # the dataclasses holding it: "trainer", "agent", "crawl"
    field_name: Optional[str] = None  # the dataclass field, when it is not `name`
    choices: Optional[tuple[str, ...]] = None
    metavar: Optional[str] = None
    shown: Any = None  # the default in words where the value says too little (or a function
    #                    returning them, called when the help is built)
    configurable: bool = True    # from CLLM_* and TOML too (for CONFIGURED_COMMANDS)
    old_name: Optional[str] = None  # the setting's name before a rename: its flag, key and
    #                                 variable still work for one release, with a warning

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return f"CLLM_{self.name.upper()}"

    @property
    def attr(self) -> str:
        return self.field_name or self.name

    def default_for(self, command: Optional[str]) -> Any:
        return self.command_defaults.get(command, self.default)

    def problem(self, value: Any) -> Optional[str]:
        if self.choices is not None and value is not None and value not in self.choices:
            return f"{self.key} {value!r} is not one of {', '.join(self.choices)}"
        msg = self.check(value) if self.check is not None else None
        return None if msg is None else msg.replace("{flag}", self.flag)


def crawler_limits() -> str:
    """The crawler's own size limits (what `cllm agent` uses, and `cllm crawl` without
    --max-file-bytes), as its help shows them: its constants, not written again here."""
    return f"the crawler's: {DEFAULT_MAX_FILE_BYTES} bytes a file, {MAX_BODY_BYTES} a page"


TRAINER, AGENT, CRAWL = ("trainer",), ("agent",), ("crawl",)

SETTINGS: tuple[Setting, ...] = (
    # --- what the agent watches and crawls
    Setting("watch", (), list, "Folder to watch (repeatable).", commands=AGENT, into=AGENT,
            metavar="DIR"),
    Setting("crawl", (), list, "Folder, file or http(s) URL to ingest at start (repeatable).",
            commands=AGENT, into=AGENT, metavar="TARGET"),
    # --- the model and its training (TrainerSettings)
    Setting("preset", "small", str, "Model size for a new data directory.",
            choices=tuple(PRESETS), hint="e.g. --preset small",
            commands=("agent", "train"), into=TRAINER),
    Setting("workers", None, int, "Worker spheres.",
            shown="usable CPUs - 1 (affinity and cgroup quota), or --cpu-share of them",
            check=lambda v: None if v is None or v >= 1
            else f"workers = {v}: at least one worker sphere is needed",
            hint="e.g. --workers 1, or leave it out for the usable CPUs - 1",
            commands=("agent", "train"), into=TRAINER),
    Setting("min_cycle_tokens", 2000, int,
            "Start a cycle when this many new tokens are pending.",
            check=at_least(1), hint="e.g. --min-cycle-tokens 2000", commands=AGENT, into=TRAINER),
    Setting("max_wait", 300.0, float,
            "... or when the oldest pending document waited this many seconds.",
            check=at_least(0), hint="e.g. --max-wait 300", commands=AGENT, into=TRAINER),
    Setting("quiet_period", 1.0, float, "Seconds without events before a changed file is read.",
            check=lambda v: None if v >= 0 else f"quiet period {v} is negative",
            hint="e.g. --quiet-period 1", commands=AGENT, into=AGENT),
    Setting("replay_fraction", 0.25, float,
            "Share of training sequences replayed from earlier documents.",
            check=lambda v: None if 0.0 <= v < 1.0 else f"replay fraction {v} is outside [0, 1)",
            hint="e.g. --replay-fraction 0.25", commands=AGENT, into=TRAINER),
    Setting("fim_rate", 0.5, float,
            "Share of training windows rearranged for fill-in-the-middle (prefix, suffix, "
            "then the middle to write), what editors' completion at the cursor asks of the "
            "model; the three FIM tokens and <|file_sep|> (before each file's name) join the "
            "vocabulary when it first runs. 0: off.",
            check=lambda v: None if 0.0 <= v <= 1.0 else f"FIM rate {v} is outside [0, 1]",
            hint="e.g. --fim-rate 0.5, or 0 to train left to right only",
            commands=("agent", "train"), into=TRAINER),
    Setting("replay_docs", 64, int, "At most this many earlier documents sampled for replay.",
            into=TRAINER),
    Setting("steps", 300, int, "Training steps.", check=at_least(1), hint="e.g. --steps 300",
            commands=("train",)),
    Setting("passes", 2.0, float,
            "Passes over each document's training text before it counts as trained.",
            check=at_least(0, strict=True), hint="e.g. --passes 2", commands=AGENT,
            into=TRAINER),
    Setting("keep_learning", "on", str,
            "With every document at its --passes, keep training (consolidation sweeps: every "
            "document read again, its whole text or 32 KiB of a longer one from where it "
            "stopped, new text pre-empting them) until a line through the held-out loss at "
            "the ends of the last --patience sweeps falls by less than --min-improvement a "
            "sweep; off: idle once the passes are done.",
            choices=("on", "off"), hint="e.g. --keep-learning off", commands=AGENT,
            into=TRAINER),
    Setting("sweep_average", "on", str,
            "During consolidation, serve the plain mean of the weights over each whole sweep "
            "from the sweep's end (the EMA follows on from it), so the weights the stopping "
            "rule judges and a converged agent serves do not lean towards the documents the "
            "sweep read last, as the EMA's do; off: the EMA throughout.",
            choices=("on", "off"), hint="e.g. --sweep-average off", commands=AGENT,
            into=TRAINER),
    Setting("min_improvement", 0.0005, float,
            "Consolidation stops when a least-squares line through the held-out loss at the "
            "ends of the last --patience sweeps falls by less than this fraction a sweep.",
            check=lambda v: None if 0 <= v < 1 else "{flag} must be in [0, 1)",
            hint="e.g. --min-improvement 0.0005", commands=AGENT, into=TRAINER),
    Setting("patience", 6, int, "Consolidation sweeps the stopping rule's line is fitted to.",
            check=at_least(2), hint="e.g. --patience 6", commands=AGENT, into=TRAINER),
    Setting("cycle_seconds", 60.0, float,
            "A cycle ends after this long, checkpoints and commits; the next one starts at "
            "once while a backlog remains (the first cycles of a backlog are shorter: 10 s, "
            "doubling, so a first model is there soon).",
            check=at_least(0, strict=True), hint="e.g. --cycle-seconds 60", commands=AGENT,
            into=TRAINER),
    Setting("max_steps", None, int, "... or after this many steps.", shown="no limit",
            check=at_least(1), hint="e.g. --max-steps 500", commands=AGENT, into=TRAINER),
    Setting("snapshot_seconds", 15.0, float,
            "While a cycle trains, publish its served weights this often (sooner while the "
            "model is young: every 5% of its training so far) as a live snapshot "
            "(checkpoints/live.safetensors), which generate, chat and serve load until the "
            "cycle commits; never a resume point, never counted. 0: off.",
            check=at_least(0), hint="e.g. --snapshot-seconds 15, or 0 to turn them off",
            commands=("agent", "train"), into=TRAINER),
    Setting("keep_checkpoints", 5, int,
            "Checkpoint files kept: the latest K, plus one per hour of checkpoints.",
            check=at_least(1), hint="e.g. --keep-checkpoints 5", commands=AGENT, into=TRAINER),
    Setting("batch_size", 16, int, "Sequences per step.", check=at_least(1),
            hint="e.g. --batch-size 16", commands=("agent", "train"), into=TRAINER),
    Setting("lr", 6e-3, float, "Peak learning rate.",
            check=at_least(0, strict=True), hint="e.g. --lr 6e-3",
            commands=("agent", "train"), into=TRAINER),
    Setting("min_lr", 1e-3, float,
            "Learning rate at the end of the rsqrt decay, a cosine decay or a wsd cooldown.",
            check=at_least(0), hint="e.g. --min-lr 1e-3", commands=("agent", "train"),
            into=TRAINER),
    Setting("schedule", "rsqrt", str,
            "Learning-rate schedule over the model's life: rsqrt (warm up once, hold the peak "
            "for --decay-steps steps, then peak x sqrt(decay_steps / step) down to --min-lr), "
            "constant (warm up once, then hold), wsd (warm up once, hold, cool down at the "
            "end of each cycle) or cosine (re-warmed and decayed every cycle). Generation and "
            "evaluation use an EMA of the weights.",
            choices=SCHEDULES, hint="e.g. --schedule rsqrt", commands=("agent", "train"),
            into=TRAINER),
    Setting("decay_steps", 250, int,
            "rsqrt: steps of the model's life at the peak rate before it starts to decay.",
            check=at_least(1), hint="e.g. --decay-steps 250", commands=("agent", "train"),
            into=TRAINER),
    Setting("warmup_steps", 100, int,
            "Steps of learning-rate warm-up: once for the model's life (per cycle for cosine).",
            check=at_least(0), hint="e.g. --warmup-steps 100", commands=("agent", "train"),
            into=TRAINER),
    Setting("ema_decay", 0.998, float,
            "Cap of the decay of the weights' EMA, which generation and evaluation use (0: no "
            "EMA, the raw weights).",
            check=lambda v: None if v == 0 or 0 < v < 1 else "{flag} must be 0 or in (0, 1)",
            hint="e.g. --ema-decay 0.998", commands=("agent", "train"), into=TRAINER),
    Setting("vocab_growth", 4096, int,
            "New vocabulary (BPE) tokens a cycle learns at most from the documents it reads "
            "first (capped by the preset's vocabulary; 0: none, a byte-level model). A new "
            "model learns its whole vocabulary, to the preset's size, from its whole backlog "
            "before its first step (tokens learned late get few updates and cost held-out "
            "loss, docs/benchmarks.md); this bounds the growth after that.",
            check=at_least(0), hint="e.g. --vocab-growth 500",
            commands=("agent", "train"), command_defaults={"train": 3000}, into=TRAINER,
            field_name="max_new_tokens", old_name="max_new_tokens"),
    Setting("val_fraction", 0.1, float, "Tail of every document held out for evaluation.",
            check=lambda v: None if 0.0 < v < 0.5
            else f"validation fraction {v} is outside (0, 0.5)",
            hint="e.g. --val-fraction 0.1", commands=("train",),
            command_defaults={"train": 0.05}, into=TRAINER),
    Setting("crystalline_weight", 0.0, float, "Weight of the crystalline prior in the loss.",
            check=lambda v: None if v >= 0 else f"crystalline weight {v} is negative",
            hint="e.g. --crystalline-weight 0.05, or 0 to turn the prior off",
            commands=("agent", "train"), into=TRAINER),
    Setting("arch", DEFAULT_ARCH, str,
            "Architecture of a new data directory's model: options of the recipe, "
            "comma-separated (mlp=relu2, qk_norm, pos=rope, tie_head=false, softcap=15, "
            "zero_proj); gpt2 (or empty): GPT-2's block. The default is what won the recipe "
            "sweep and llama.cpp runs (its nemotron graph: cllm export). A data directory's "
            "model keeps the architecture its checkpoints record.",
            check=_arch_problem, hint="e.g. --arch gpt2, or --arch mlp=relu2,pos=rope",
            commands=("agent", "train"), into=TRAINER),
    Setting("optimizer", None, str,
            "adamw, or muon (Muon on the hidden matrices, AdamW on the rest, one learning "
            "rate).",
            shown="the one the data directory's checkpoint trained with; muon for a new one",
            choices=OPTIMIZERS, hint="e.g. --optimizer muon", commands=("agent", "train"),
            into=TRAINER),
    Setting("init", None, str, "Embedding init of a new model.", choices=INITS,
            hint="e.g. --init normal", commands=("agent", "train"),
            command_defaults={"agent": "normal"}, into=TRAINER),
    Setting("seed", 0, int, "Seed of a new model and of the data order.",
            commands=("train",), into=TRAINER),
    # --- files and folders
    Setting("include", (), list,
            "Only files matching this gitignore-style pattern (repeatable). Credentials and "
            "keys (.ssh/, .env, *.pem, ...: README) are never read unless one names such a "
            "pattern exactly.", shown="all",
            commands=("agent", "crawl"), into=AGENT + CRAWL, metavar="PATTERN"),
    Setting("exclude", (), list,
            "Also skip files matching this gitignore-style pattern (repeatable); VCS, build, "
            "temp and swap files are always skipped.",
            commands=("agent", "crawl"), into=AGENT + CRAWL, metavar="PATTERN"),
    Setting("polling", False, bool, "Poll folders instead of inotify (network filesystems).",
            commands=AGENT, into=AGENT),
    Setting("follow_symlinks", False, bool,
            "Follow symbolic links in watched and crawled folders (loops detected).",
            commands=AGENT, into=AGENT),
    Setting("fallback_encoding", None, str,
            "Text codec for input that is not UTF-8 and declares no usable charset, e.g. "
            "cp1252: files, and pages of URL targets (HTML without it: cp1252). Recorded per "
            "document.", shown="refuse it", commands=("agent", "crawl"),
            into=AGENT + CRAWL, metavar="CODEC"),
    # --- the crawler
    Setting("max_pages", 100, int, "Pages to fetch per crawled site at most.",
            check=at_least(1), hint="e.g. --max-pages 100",
            commands=("agent", "crawl"), into=AGENT + CRAWL),
    Setting("max_depth", 2, int, "Link depth from each start URL (0: the start page only).",
            check=at_least(0), hint="e.g. --max-depth 2",
            commands=("agent", "crawl"), into=AGENT + CRAWL),
    Setting("max_links", MAX_LINKS, int,
            "Links taken from one page at most (those on the crawled host, in page order); the "
            "rest are dropped and counted (links_dropped), so a page of a million links costs "
            "no more frontier rows than one of this many.",
            check=at_least(1), hint="e.g. --max-links 1000",
            commands=("agent", "crawl"), into=AGENT + CRAWL),
    Setting("recrawl_interval", 86400.0, float,
            "Seconds after which a crawled URL is fetched again (conditionally: an unchanged "
            "page costs a 304; a changed one becomes a new version, a removed one is marked "
            "deleted); the agent re-crawls its URL targets on this schedule. 0: never.",
            check=at_least(0), hint="e.g. --recrawl-interval 86400 (daily)",
            commands=("agent", "crawl"), into=AGENT + CRAWL),
    Setting("delay", 1.0, float,
            "Seconds between requests to one host (robots.txt Crawl-delay may raise it).",
            check=at_least(0), hint="e.g. --delay 1", commands=CRAWL, into=CRAWL),
    Setting("timeout", 10.0, float, "Seconds to wait for a connection or for data.",
            check=at_least(0.1), hint="e.g. --timeout 10", commands=CRAWL, into=CRAWL),
    Setting("retries", 3, int,
            "Times a request failing with a network error, 5xx, 408 or 429 is tried again, "
            "waiting 1, 2, 4 ... s (or the server's Retry-After) in between.",
            check=at_least(0), hint="e.g. --retries 3 (0: never retry)",
            commands=CRAWL, into=CRAWL),
    Setting("max_file_bytes", None, int,
            "Larger files and pages are refused (recorded).",
            shown=crawler_limits, check=at_least(1),
            hint="e.g. --max-file-bytes 4194304", commands=CRAWL, into=CRAWL),
    Setting("allow_private_hosts", False, bool,
            "Let the crawler reach loopback, private and other non-public addresses (never "
            "link-local or cloud metadata ones: only --allow-network opens those).",
            commands=("agent", "crawl"), into=AGENT + CRAWL),
    Setting("allow_network", (), list,
            "Let the crawler reach this network, e.g. 10.1.0.0/16 or 169.254.169.254/32 "
            "(repeatable; the only way to open link-local and cloud metadata addresses; checked "
            "by the crawler: ssrf.HostPolicy.build).",
            commands=("agent", "crawl"),
            into=AGENT + CRAWL, field_name="allow_networks", metavar="CIDR"),
    # --- sharing the machine: priority, CPUs, pauses (agent/limits.py, engine/priority.py)
    # the agent is left running in the background: low priority and battery pauses are its
    # defaults; `cllm train` (run in the foreground) and the library's dataclasses default
    # to neither
    Setting("priority", "normal", str,
            "CPU and I/O priority of the training threads (workers, tokenizer learning, "
            "evaluation): low (nice +10, lowest best-effort I/O), idle (nice 19, SCHED_IDLE, "
            "idle I/O: only what nothing else wants) or normal; the server and the watcher "
            "keep the process's.",
            choices=PRIORITIES, hint="e.g. --priority idle", commands=("agent", "train"),
            command_defaults={"agent": "low"}, into=TRAINER),
    Setting("cpu_share", None, float,
            "Share of the usable CPUs (affinity, cgroup quota) training may use, in (0, 1]: "
            "workers = share x CPUs (at least 1), and below one CPU a duty cycle (it rests "
            "between steps).", shown="all of them",
            check=lambda v: None if v is None or 0 < v <= 1 else "{flag} must be in (0, 1]",
            hint="e.g. --cpu-share 0.5", commands=("agent", "train"), into=TRAINER),
    Setting("pause_on_battery", False, bool,
            "Pause training while the machine runs on battery (it resumes on mains power).",
            shown="yes, where the machine reports a battery", commands=AGENT,
            command_defaults={"agent": True}, into=AGENT),
    Setting("pause_above_load", None, float,
            "Pause training while the machine's other load (the 1-minute load average less "
            "the agent's own share) is above this many times its usable CPUs; it resumes "
            "below 0.8 of that.", shown="off",
            check=at_least(0, strict=True), hint="e.g. --pause-above-load 0.75",
            commands=AGENT, into=AGENT, metavar="L"),
    Setting("limits_interval", 10.0, float,
            "Seconds between checks of the power supply and the load.", check=at_least(0.01),
            into=AGENT),
    Setting("system_root", "/", str,
            "The folder /proc and /sys are read under for the power supply, load and cgroup "
            "(tests point it at fixture files).", into=AGENT),
    Setting("log_file", None, str,
            "Also log to this file, rotated by size (for an agent run outside a service "
            "manager's journal).", shown="no file", commands=AGENT, into=AGENT, metavar="PATH"),
    Setting("log_file_bytes", 10_000_000, int, "A log file is rotated past this size.",
            check=at_least(1024), hint="e.g. --log-file-bytes 10000000", commands=AGENT,
            into=AGENT),
    Setting("log_file_count", 5, int, "Rotated log files kept (PATH.1 ... PATH.N).",
            check=at_least(1), hint="e.g. --log-file-count 5", commands=AGENT, into=AGENT),
    # --- several agents on one store
    Setting("role", "all", str,
            "What this agent does: 'ingest' watches and crawls into the store, 'train' learns "
            "what the store holds (one trainer per store: the store's lease), 'all' both.",
            choices=("all", "ingest", "train"), hint="e.g. --role ingest",
            commands=AGENT, into=AGENT),
    Setting("machine", None, str,
            "The name the documents this agent records carry as their origin.",
            shown="this host's name", hint="e.g. --machine laptop", commands=AGENT, into=AGENT),
    Setting("lease_ttl", 30.0, float,
            "Seconds the trainer lease and crawl claims last without a heartbeat: how soon "
            "another agent can take over from one that died or hangs.",
            check=at_least(1.0), hint="e.g. --lease-ttl 30", commands=AGENT, into=AGENT),
    # --- the run
    Setting("max_cycles", None, int, "Stop after this many completed cycles.",
            shown="run until stopped", check=at_least(1), hint="e.g. --max-cycles 1",
            commands=AGENT, into=AGENT, configurable=False),
    Setting("database_url", None, str,
            "The store's SQLAlchemy URL (from `cllm --database-url`); None: $CLLM_DATABASE_URL, "
            "else the SQLite file in the data directory.", into=AGENT, configurable=False),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# every command with a row reads CLLM_* and the TOML files too, the same way
CONFIGURED_COMMANDS = frozenset(c for s in SETTINGS for c in s.commands)


def settings_of(command: str) -> list[Setting]:
    """The settings `command` takes as flags, in table order."""
    return [s for s in SETTINGS if command in s.commands]


# ------------------------------------------------------------------- settings dataclasses

def _check_fields(obj, holder: str) -> None:
    for s in SETTINGS:
        if holder in s.into:
            problem = s.problem(getattr(obj, s.attr))
            if problem is not None:
                raise ConfigError(problem, s.hint)


def _from_table(holder: str):
    """Make `cls` a frozen dataclass: its own annotated fields first, then one field per
    SETTINGS row held by `holder` (table order, the table's default), checked on creation."""
    def make(cls):
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for s in SETTINGS:
            if holder in s.into:
                typ = "tuple[str, ...]" if s.type is list else s.type.__name__
                annotations[s.attr] = typ if s.default is not None else f"Optional[{typ}]"
                setattr(cls, s.attr, s.default)
        cls.__annotations__ = annotations
        cls.__post_init__ = lambda self: _check_fields(self, holder)
        cls = dataclass(frozen=True)(cls)
        cls.holder = holder
        return cls
    return make


def build(cls, values: Mapping[str, Any], **fields: Any):
    """A settings dataclass from resolved `values` (by setting name; those `cls` holds),
    with `fields` (by field name) set as given."""
    kwargs = {}
    for s in SETTINGS:
        if cls.holder in s.into and s.name in values:
            v = values[s.name]
            kwargs[s.attr] = tuple(v) if s.type is list else v
    kwargs.update(fields)
    return cls(**kwargs)


@_from_table("trainer")
class TrainerSettings:
    """How the continuous trainer sizes, trains and evaluates its cycles (the "trainer" rows
    of SETTINGS)."""

    def replace(self, **changes) -> "TrainerSettings":
        return dataclasses.replace(self, **changes)

    def train_config(self, steps: int, resumed: Optional[str] = None) -> TrainConfig:
        """The engine's config for a cycle of `steps` planned steps (the cosine horizon; the
        constant and wsd schedules count their warm-up over the model's life). `resumed`:
        the optimizer the model's checkpoint trained with, kept unless --optimizer says."""
        warmup = (min(self.warmup_steps, max(0, steps // 5)) if self.schedule == "cosine"
                  else self.warmup_steps)
        return TrainConfig(lr=self.lr, min_lr=self.min_lr, batch_size=self.batch_size,
                           warmup_steps=warmup, total_steps=steps, schedule=self.schedule,
                           decay_steps=self.decay_steps,
                           ema_decay=self.ema_decay or None,
                           crystalline_weight=self.crystalline_weight,
                           optimizer=self.optimizer or resumed or NEW_OPTIMIZER)

    def arch_options(self) -> dict:
        """The ModelConfig options of a new model (--arch)."""
        return parse_arch(self.arch or "")


@_from_table("agent")
class AgentConfig:
    """What the daemon watches and crawls, and how (the "agent" rows of SETTINGS)."""

    data_dir: Path
    trainer: TrainerSettings

    def path_filter_args(self) -> dict:
        return {"include": list(self.include) or None,
                "exclude": DEFAULT_EXCLUDES + tuple(self.exclude), "own_dirs": (self.data_dir,)}

    def ingestor(self, store):
        return Ingestor(store, fallback_encoding=self.fallback_encoding,
                        follow_symlinks=self.follow_symlinks,
                        private=PrivateRules(self.include, own_dirs=(self.data_dir,)))


@_from_table("crawl")
class CrawlSettings:
    """How `cllm crawl` walks folders and fetches pages (the "crawl" rows of SETTINGS)."""
