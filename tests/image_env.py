"""The pipeline image's Python environment, rebuilt from kubeflow/Dockerfile's own lines, without Docker.

No Docker engine runs on these machines, but what the image's tasks run can be reproduced from the
Dockerfile as Docker reads it:
- every stage gets a folder of its own standing for its filesystem, and `FROM <stage>` replays that
  stage's instructions into it (Docker's stages share no files but what COPY --from takes);
- ARG and ENV are substituted as Docker substitutes them (${NAME}, $NAME), and the absolute paths
  ENV, WORKDIR and COPY name land under the stage's folder;
- COPY takes files from the build context through .dockerignore (its rules: patterns in order, the
  last match wins, `**` spans folders, a folder's exclusion covers what it holds), or with --from
  from the other stage's folder;
- RUN lines run with /bin/sh -c in the stage's working folder with the stage's environment. They must
  name no absolute path (bar /dev/null), so that they mean the same here as in the image: checked.
Not reproduced, and said here: the base image (this machine's Python 3.10 in a new virtual
environment with pip stands for it); the one RUN line that makes the image's user and folders
outside the environment (USER_SETUP: operating-system users and root folders; the tests run as
this machine's user); the NVIDIA packages of the lock (3 GB of CUDA libraries, of no use without a
GPU; every other pin of the copied lock is synced); the build's cache settings (CACHE_SETTINGS: they
keep the image small, here uv and pip use this machine's caches). The building machine's network
settings pass through (NETWORK_SETTINGS), as a docker build's do.
"""
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "kubeflow", "Dockerfile")
GPU_ONLY_PACKAGES = re.compile(r"^nvidia-[a-z0-9-]+-cu12==")
USER_SETUP = "useradd "
CACHE_SETTINGS = ("UV_NO_CACHE", "PIP_NO_CACHE_DIR")
# The building machine's network settings (proxies, certificate authorities, package indexes), which
# a docker build also takes from its host; they say how to reach PyPI, not what the image holds.
NETWORK_SETTINGS = re.compile(r"(?i).*_proxy|ssl_cert_(file|dir)|.*ca_bundle|pip_(cert|find_links|index_url|"
                              r"extra_index_url|default_timeout)|uv_(index_url|extra_index_url|native_tls)")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def without_gpu_only_packages(lines):
    """A lock's lines without the GPU-only requirements, each with its `--hash` continuation lines."""
    skipping = False
    for line in lines:
        if line[:1].isalnum():
            skipping = bool(GPU_ONLY_PACKAGES.match(line))
        elif not line.startswith(" "):
            skipping = False
        if not skipping:
            yield line


class DockerfileError(Exception):
    """The Dockerfile uses something this rebuild cannot reproduce faithfully."""


@dataclasses.dataclass
class Instruction:
    name: str  # upper case
    arguments: str
    line: int


@dataclasses.dataclass
class Stage:
    name: Optional[str]
    base: str
    instructions: List[Instruction]


@dataclasses.dataclass
class ImageEnvironment:
    """The last stage, built: its folder, working directory, environment and user."""
    root: str
    workdir: str
    env: Dict[str, str]
    user: Optional[str]
    skipped: List[str]

    def run(self, command: List[str], **kwargs) -> subprocess.CompletedProcess:
        """`command` as the image runs it: from its working directory, with its environment."""
        return subprocess.run(command, cwd=self.workdir, env=self.env, capture_output=True, text=True, **kwargs)

    @property
    def python(self) -> str:
        return shutil.which("python", path=self.env["PATH"])


def parse(path: str = DOCKERFILE) -> Tuple[Dict[str, str], List[Stage]]:
    """The global ARGs and the stages, each instruction with its line continuations joined."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    instructions, pending, start = [], "", 0
    for number, line in enumerate(lines, 1):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction are dropped, as Docker does
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        name, _, arguments = (pending + line).strip().partition(" ")
        instructions.append(Instruction(name.upper(), arguments.strip(), start))
        pending = ""
    global_args, stages = {}, []
    for instruction in instructions:
        if instruction.name == "FROM":
            words = instruction.arguments.split()
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(stage_name, words[0], []))
        elif not stages:
            if instruction.name != "ARG":
                raise DockerfileError(f"line {instruction.line}: only ARG may come before the first FROM")
            key, _, value = instruction.arguments.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def build(out_dir: str, path: str = DOCKERFILE, context: str = ROOT) -> ImageEnvironment:
    """Builds the Dockerfile's last stage under out_dir."""
    global_args, stages = parse(path)
    return _Builder(out_dir, context, global_args, stages).build(len(stages) - 1)


class _Builder:
    def __init__(self, out_dir: str, context: str, global_args: Dict[str, str], stages: List[Stage]):
        self.out_dir, self.context, self.global_args, self.stages = out_dir, context, global_args, stages
        self.built: Dict[int, ImageEnvironment] = {}
        self.ignore = _dockerignore(os.path.join(context, ".dockerignore"))
        self._base_python: Optional[str] = None

    def build(self, index: int) -> ImageEnvironment:
        if index not in self.built:
            root = os.path.join(self.out_dir, self.stages[index].name or f"stage-{index}")
            os.makedirs(root)
            state = _State(root=root, workdir="/", env=self._base_env(), user=None, skipped=[])
            self._replay(index, state)
            self.built[index] = ImageEnvironment(root, state.mapped(state.workdir), state.env, state.user,
                                                 state.skipped)
        return self.built[index]

    def _base_env(self) -> Dict[str, str]:
        """The base image's environment: a Python 3.10 with pip first on PATH, and a home."""
        if self._base_python is None:
            base = os.path.join(self.out_dir, "base-python")
            interpreter = os.path.realpath(sys.executable)  # the machine's Python 3.10, not the project's venv
            subprocess.run([interpreter, "-m", "venv", base], check=True)
            self._base_python = base
        network = {key: value for key, value in os.environ.items() if NETWORK_SETTINGS.fullmatch(key)}
        return {"PATH": f"{self._base_python}/bin:{_SYSTEM_PATH}", "HOME": os.environ.get("HOME", "/root"),
                "LANG": "C.UTF-8", **network}

    def _replay(self, index: int, state: "_State") -> None:
        stage = self.stages[index]
        parent = self._stage_index(stage.base)
        if parent is not None:
            self._replay(parent, state)
        for instruction in stage.instructions:
            getattr(self, f"_{instruction.name.lower()}")(instruction, state)

    def _stage_index(self, name: str) -> Optional[int]:
        names = [stage.name for stage in self.stages]
        return names.index(name) if name in names else None

    def _arg(self, instruction: Instruction, state: "_State") -> None:
        key, _, default = instruction.arguments.partition("=")
        state.args[key] = default or self.global_args.get(key, "")  # a bare ARG takes the global one's value

    def _env(self, instruction: Instruction, state: "_State") -> None:
        pairs = [pair.partition("=")[::2] for pair in shlex.split(instruction.arguments)]
        # Docker substitutes every value of one ENV with the variables as they were before it.
        values = {key: state.substitute(_map_absolute(value, state.root)) for key, value in pairs}
        state.env.update({key: value for key, value in values.items() if key not in CACHE_SETTINGS})

    def _workdir(self, instruction: Instruction, state: "_State") -> None:
        workdir = state.substitute(instruction.arguments)
        state.workdir = workdir if workdir.startswith("/") else os.path.join(state.workdir, workdir)
        os.makedirs(state.mapped(state.workdir), exist_ok=True)

    def _user(self, instruction: Instruction, state: "_State") -> None:
        state.user = instruction.arguments

    def _copy(self, instruction: Instruction, state: "_State") -> None:
        words = shlex.split(instruction.arguments)
        flags = dict(word[2:].partition("=")[::2] for word in words if word.startswith("--"))
        *sources, destination = [word for word in words if not word.startswith("--")]
        target = destination if destination.startswith("/") else os.path.join(state.workdir, destination)
        target = state.mapped(target)
        if "from" in flags:
            source_root, ignore = self.build(self._stage_index(flags["from"])).root, []
            sources = [source.lstrip("/") for source in sources]
        else:
            source_root, ignore = self.context, self.ignore
        for source in sources:
            self._copy_one(source_root, source.rstrip("/"), target, destination.endswith("/") or len(sources) > 1,
                           ignore)

    def _copy_one(self, source_root: str, source: str, target: str, into_folder: bool, ignore) -> None:
        path = os.path.join(source_root, source)
        if os.path.isdir(path):
            for folder, _, files in os.walk(path):
                for name in files:
                    relative = os.path.relpath(os.path.join(folder, name), source_root)
                    if not _ignored(relative, ignore):
                        self._place(os.path.join(source_root, relative),
                                    os.path.join(target, os.path.relpath(relative, source)))
        elif os.path.isfile(path) and not _ignored(source, ignore):
            self._place(path, os.path.join(target, os.path.basename(source)) if into_folder else target)
        else:
            raise DockerfileError(f"COPY {source}: not in the build context {source_root} (or .dockerignore "
                                  f"leaves it out)")

    @staticmethod
    def _place(source: str, target: str) -> None:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if target.endswith(".lock"):
            with open(source, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as out:
                out.writelines(without_gpu_only_packages(f))
        else:
            shutil.copy2(source, target)

    def _run(self, instruction: Instruction, state: "_State") -> None:
        command = instruction.arguments
        if command.startswith(USER_SETUP):
            state.skipped.append(command)
            return
        absolute = [path for path in re.findall(r"(?:^|[\s=:'\"])(/[\w./-]*)", command) if path != "/dev/null"]
        if absolute:
            raise DockerfileError(f"line {instruction.line}: RUN names {absolute}; use ENV variables or paths "
                                  f"relative to WORKDIR, so that the line means the same in this rebuild")
        done = subprocess.run(["/bin/sh", "-c", command], cwd=state.mapped(state.workdir), env=state.env,
                              capture_output=True, text=True)
        if done.returncode:
            raise DockerfileError(f"line {instruction.line}: RUN {command}\nexited {done.returncode}:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


@dataclasses.dataclass
class _State:
    root: str
    workdir: str
    env: Dict[str, str]
    user: Optional[str]
    skipped: List[str]
    args: Dict[str, str] = dataclasses.field(default_factory=dict)

    def mapped(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def substitute(self, text: str) -> str:
        values = {**self.args, **self.env}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), ""), text)


def _map_absolute(value: str, root: str) -> str:
    """Absolute paths written in an ENV value (at its start, or after ':' or '='), under the stage's folder."""
    return re.sub(r"(^|[:=])/", lambda m: f"{m.group(1)}{root}/", value)


def _dockerignore(path: str) -> List[Tuple[bool, re.Pattern]]:
    if not os.path.exists(path):
        return []
    rules = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            pattern = line.strip()
            if not pattern or pattern.startswith("#"):
                continue
            negate = pattern.startswith("!")
            rules.append((negate, _glob_regex(os.path.normpath(pattern.lstrip("!").lstrip("/")))))
    return rules


def _glob_regex(pattern: str) -> re.Pattern:
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def _ignored(relative: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negate, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored
