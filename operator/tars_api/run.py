"""SelfCodingRun: one run of the self-coding workflow over a project's targets."""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from tars_api.meta import (
    AGE_COLUMN,
    CONFIG_MAP_KEY_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    ApiObject,
    Cel,
    CelRule,
    Condition,
    PrinterColumn,
    ResourceInfo,
    Time,
    cel_rules,
    cel_string,
    conditions_field,
    observed_generation_field,
    reject_duplicates,
)
from tars_api.names import DEFAULT_UPLOAD_KEY
from tars_api.vocabulary import DEFAULT_MODEL, ENV_NAME_PATTERN, EngineName, SandboxMode

SELF_CODING_RUN_PLURAL = "selfcodingruns"
MAX_TARGETS = 64
MAX_LATEST_RESULTS = 10
PATH_MAX_LENGTH = 4096
SANDBOX_DETAIL_MAX_LENGTH = 1024

_GIT_WORD_REGEX = r"[^-\s][^\s]*"
# A `..` path segment anywhere: start, middle or end.
_PARENT_SEGMENT_REGEX = r"(^|/)\.\.(/|$)"


def _immutable(field: str) -> Cel:
    return Cel(
        CelRule(
            rule="self == oldSelf",
            message=f"spec.{field} is immutable: a run's inputs cannot change once it exists",
        )
    )


def _path_messages(field: str, *, absolute: bool) -> tuple[str, str]:
    anchoring = "an absolute path" if absolute else "relative to the project root, not absolute"
    return f"{field} must be {anchoring}", f"{field} must not contain a '..' segment"


def _check_path(field: str, *, absolute: bool) -> Callable[[str], str]:
    anchoring_message, parent_message = _path_messages(field, absolute=absolute)

    def check(path: str) -> str:
        if path.startswith("/") != absolute:
            raise ValueError(anchoring_message)
        if ".." in path.split("/"):
            raise ValueError(parent_message)
        return path

    return check


def _path_rules(field: str, *, absolute: bool) -> Cel:
    anchoring_message, parent_message = _path_messages(field, absolute=absolute)
    return Cel(
        CelRule(
            rule="self.startsWith('/')" if absolute else "!self.startsWith('/')",
            message=anchoring_message,
        ),
        CelRule(rule=f"!self.matches({cel_string(_PARENT_SEGMENT_REGEX)})", message=parent_message),
    )


# Paths refused by pydantic and by the API server alike: no escaping with `..`.
TargetPath = Annotated[
    str,
    Field(min_length=1, max_length=PATH_MAX_LENGTH),
    AfterValidator(_check_path("spec.targets", absolute=False)),
    _path_rules("spec.targets", absolute=False),
]
SubPath = Annotated[
    str,
    Field(min_length=1, max_length=PATH_MAX_LENGTH),
    AfterValidator(_check_path("spec.source.volume.subPath", absolute=False)),
    _path_rules("spec.source.volume.subPath", absolute=False),
]
HostPath = Annotated[
    str,
    Field(min_length=1, max_length=PATH_MAX_LENGTH),
    AfterValidator(_check_path("spec.source.volume.hostPath", absolute=True)),
    _path_rules("spec.source.volume.hostPath", absolute=True),
]


class RunPhase(enum.StrEnum):
    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    stopped = "Stopped"

    @property
    def is_terminal(self) -> bool:
        return self in (RunPhase.succeeded, RunPhase.failed, RunPhase.stopped)


class RunStage(enum.StrEnum):
    initializing = "Initializing"
    scanning = "Scanning"
    analyzing = "Analyzing"
    generating = "Generating"
    testing = "Testing"
    applying = "Applying"
    learning = "Learning"
    done = "Done"


class RunReason(enum.StrEnum):
    """The `reason` of a run's conditions and Events, besides the phase names themselves."""

    replicas_ready = "ReplicasReady"
    no_ready_coordinator = "NoReadyCoordinator"
    no_ready_workers = "NoReadyWorkers"
    waiting_for_replicas = "WaitingForReplicas"
    assigning = "Assigning"
    running = "Running"
    reassigned = "Reassigned"
    stopped = "Stopped"
    coordinator_lost = "CoordinatorLost"
    deadline_exceeded = "DeadlineExceeded"


class RunConditionType(enum.StrEnum):
    replicas_ready = "ReplicasReady"
    """The role replicas the run needs are ready (False says which are missing)."""
    progressing = "Progressing"
    """The workflow is moving."""
    complete = "Complete"
    """The run has ended; the reason says how (Succeeded, Failed, Stopped, ...)."""


def _git_word_message(field: str, what: str) -> str:
    return f"{field} must be {what} without spaces or a leading '-'"


def _check_git_word(message: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not re.fullmatch(_GIT_WORD_REGEX, value, re.ASCII):
            raise ValueError(message)
        return value

    return check


def _git_word_rules(message: str) -> Cel:
    return Cel(CelRule(rule=f"self.matches({cel_string(f'^{_GIT_WORD_REGEX}$')})", message=message))


_GIT_URL_MESSAGE = _git_word_message("spec.source.git.url", "a repository URL")
_GIT_REF_MESSAGE = _git_word_message("spec.source.git.ref", "a branch, tag or commit")
# Handed to git as arguments: never an option (leading '-'), never split by spaces.
GitUrl = Annotated[
    str, AfterValidator(_check_git_word(_GIT_URL_MESSAGE)), _git_word_rules(_GIT_URL_MESSAGE)
]
GitRef = Annotated[
    str, AfterValidator(_check_git_word(_GIT_REF_MESSAGE)), _git_word_rules(_GIT_REF_MESSAGE)
]


class GitSource(ApiModel):
    """A repository cloned at a ref."""

    url: GitUrl = Field(min_length=1, max_length=2048, description="Repository to clone")
    ref: GitRef = Field(
        default="HEAD", min_length=1, max_length=255, description="Branch, tag or commit"
    )
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret with the credentials (username/password or ssh-privatekey)",
    )
    allow_file_protocol: bool = Field(
        default=False,
        description="Allow a file:// URL, a repository on the coordinator's own filesystem "
        "(otherwise only https, ssh and git transports)",
    )


class UploadSource(ApiModel):
    """A project archive the CLI uploaded from a local checkout."""

    config_map: str = Field(
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="ConfigMap holding the project archive, put there by the CLI",
    )
    key: str = Field(
        default=DEFAULT_UPLOAD_KEY,
        max_length=253,
        pattern=CONFIG_MAP_KEY_PATTERN,
        description="binaryData key of the gzipped tar archive",
    )


_VOLUME_ONE_OF_MESSAGE = "spec.source.volume must set exactly one of claimName or hostPath"


class VolumeSource(ApiModel):
    """A project on a PersistentVolumeClaim or a node directory; edited in place."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="has(self.claimName) != has(self.hostPath)", message=_VOLUME_ONE_OF_MESSAGE
            )
        )
    )

    claim_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="PersistentVolumeClaim",
    )
    host_path: HostPath | None = Field(default=None, description="Directory on the node")
    sub_path: SubPath | None = Field(
        default=None, description="Project directory inside the volume"
    )

    @model_validator(mode="after")
    def _exactly_one_location(self) -> Self:
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError(_VOLUME_ONE_OF_MESSAGE)
        return self


_SOURCE_NONE_MESSAGE = "spec.source must set one of git, upload or volume"
_SOURCE_MANY_MESSAGE = "spec.source must set only one of git, upload or volume"


class RunSource(ApiModel):
    """Where the project comes from: exactly one of git, upload, volume."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="has(self.git) || has(self.upload) || has(self.volume)",
                message=_SOURCE_NONE_MESSAGE,
                reason="FieldValueRequired",
            ),
            CelRule(
                rule="(has(self.git) ? 1 : 0) + (has(self.upload) ? 1 : 0) + (has(self.volume) ? 1 : 0) <= 1",
                message=_SOURCE_MANY_MESSAGE,
                reason="FieldValueForbidden",
            ),
        )
    )

    git: GitSource | None = Field(default=None, description="Clone a git repository")
    upload: UploadSource | None = Field(default=None, description="Unpack an uploaded archive")
    volume: VolumeSource | None = Field(default=None, description="Work on a mounted volume")

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Self:
        chosen = [kind for kind in (self.git, self.upload, self.volume) if kind is not None]
        if not chosen:
            raise ValueError(_SOURCE_NONE_MESSAGE)
        if len(chosen) > 1:
            raise ValueError(_SOURCE_MANY_MESSAGE)
        return self


DEFAULT_PACKAGE_INDEX = "https://pypi.org/simple"
DEFAULT_TEST_EXTRAS = ("test",)
# PEP 685 extra names, and an index URL pip can be pointed at.
_EXTRA_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
_INDEX_URL_PATTERN = r"^https?://[^\s]+$"


class TestEnvironment(ApiModel):
    """The virtualenv the project's tests run in, made by the tester from the package index.

    Either the project is installed with its test extras (`pip install .[test]`), or the
    setup command runs in the project's copy with the new virtualenv active. The tester
    keeps the result in its scratch volume, keyed by the digest of the project's
    dependency files and these settings, so a run with the same dependencies reuses it.
    """

    __test__ = False  # not a pytest class

    extras: list[Annotated[str, Field(pattern=_EXTRA_NAME_PATTERN, max_length=64)]] = Field(
        default_factory=lambda: list(DEFAULT_TEST_EXTRAS),
        max_length=16,
        description="Extras installed with the project (pip install .[extras]); pytest is "
        "always added",
    )
    setup_command: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description="Instead of installing the project: an argv run in the project's copy "
        "with the virtualenv active (pip in it), for example pip install -r requirements.txt",
    )
    package_index: str = Field(
        default=DEFAULT_PACKAGE_INDEX,
        max_length=2048,
        pattern=_INDEX_URL_PATTERN,
        description="The only package index the setup may use (pip --index-url)",
    )
    timeout_seconds: int = Field(
        default=900, ge=30, le=7200, description="How long making the environment may take"
    )

    @property
    def recipe(self) -> str:
        """How the virtualenv is made, in the words the status shows."""
        if self.setup_command:
            return f"{shlex.join(self.setup_command)} from {self.package_index}"
        return f"pip install .{self.extras_suffix} pytest from {self.package_index}"

    @property
    def extras_suffix(self) -> str:
        """`[test,docs]` as pip takes it after a project's path; empty without extras."""
        return f"[{','.join(self.extras)}]" if self.extras else ""


class SelfCodingRunSpec(ApiModel):
    targets: Annotated[list[TargetPath], _immutable("targets")] = Field(
        min_length=1,
        max_length=MAX_TARGETS,
        description="Project-relative directories or files to improve",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    source: Annotated[RunSource, _immutable("source")]
    auto_apply: Annotated[bool, _immutable("autoApply")] = Field(
        default=False,
        description="Apply accepted changes (commits) instead of only producing a patch",
    )
    engine: Annotated[EngineName, _immutable("engine")] = Field(
        default=EngineName.static,
        description="static (ruff fixes, codemods) or ollama (a local model)",
    )
    model: Annotated[str, _immutable("model")] = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        max_length=253,
        description="Model for the ollama engine",
    )
    test_command: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=4096)]], _immutable("testCommand")
    ] = Field(
        default_factory=list,
        max_length=64,
        description="The project's test command as argv; detected when empty",
    )
    sandbox: Annotated[SandboxMode, _immutable("sandbox")] = Field(
        default=SandboxMode.auto,
        description="Run the tests in bubblewrap inside the tester pod: auto (when the pod "
        "allows it, saying so in the status when not), required, or off",
    )
    test_env: Annotated[
        list[Annotated[str, Field(pattern=ENV_NAME_PATTERN)]],
        _immutable("testEnv"),
    ] = Field(
        default_factory=list,
        max_length=64,
        description="Variables of the tester's environment passed on to the tests, by name; "
        "they get only PATH, the locale and their virtualenv otherwise",
    )
    test_network: Annotated[bool, _immutable("testNetwork")] = Field(
        default=False, description="Let the tests reach the network (cut off by default)"
    )
    test_environment: Annotated[TestEnvironment | None, _immutable("testEnvironment")] = Field(
        default=None,
        description="Make a virtualenv with the project's dependencies for its tests; "
        "without it the tests run with the tester's own Python (TARS and pytest only)",
    )
    learning: Annotated[bool, _immutable("learning")] = Field(
        default=True,
        description="Use what the coordinator's learning store holds and record this run's "
        "outcomes in it; false keeps the run out of it (nothing read, nothing written)",
    )
    max_files: int = Field(default=20, ge=1, le=10000, description="Budget: files to work on")
    max_attempts_per_file: int = Field(
        default=2,
        ge=1,
        le=10,
        description="Budget: generation attempts per file (ollama engine; the static engine "
        "bisects a failing file's rules instead)",
    )
    deadline_seconds: int = Field(
        default=3600, ge=60, le=86400, description="Budget: wall-clock seconds before the run fails"
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Budget: model tokens (ollama engine)"
    )
    stop: Annotated[
        bool,
        Cel(
            CelRule(
                rule="self || !oldSelf",
                message="spec.stop cannot be unset: a stopped run stays stopped",
            )
        ),
    ] = Field(default=False, description="Ask the run to stop; accepted work is kept")

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[str]) -> list[str]:
        # The API server refuses duplicates too: targets is a list-set.
        reject_duplicates(targets, "spec.targets has duplicate entries")
        return targets


class RunStatistics(ApiModel):
    """Counters of the run so far."""

    files_total: int = Field(default=0, ge=0)
    files_processed: int = Field(default=0, ge=0)
    files_failed: int = Field(default=0, ge=0)
    improvements_proposed: int = Field(default=0, ge=0)
    improvements_accepted: int = Field(default=0, ge=0)
    improvements_applied: int = Field(default=0, ge=0)
    test_runs: int = Field(default=0, ge=0)
    tokens_used: int = Field(default=0, ge=0)

    @property
    def progress(self) -> str:
        """The status.progress text: files processed / files selected."""
        return f"{self.files_processed}/{self.files_total}"


class FileOutcome(enum.StrEnum):
    applied = "Applied"
    """Passed the tests and was applied (a commit, or an in-place edit)."""
    accepted = "Accepted"
    """Passed the tests; part of the run's patch."""
    rejected = "Rejected"
    """Every candidate failed validation or the tests."""
    failed = "Failed"
    """The file could not be processed (analysis or generation error)."""
    skipped = "Skipped"
    """Nothing to improve, or the budget ran out."""


class FileResult(ApiModel):
    """How one file fared."""

    path: str = Field(max_length=PATH_MAX_LENGTH, description="Project-relative path")
    outcome: FileOutcome
    message: str = Field(default="", max_length=1024, description="Why, in one line")
    attempts: int = Field(default=0, ge=0, description="Candidates generated for the file")
    commit: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{7,64}$", description="Commit that applied the change"
    )


class SelfCodingRunStatus(ApiModel):
    phase: RunPhase | None = Field(default=None, description="Where the run is in its life")
    stage: RunStage | None = Field(default=None, description="Workflow step under way")
    current_file: str | None = Field(
        default=None,
        max_length=PATH_MAX_LENGTH,
        description="Project-relative file being worked on",
    )
    progress: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[0-9]+/[0-9]+$",
        description="Files done / files selected",
    )
    statistics: RunStatistics = Field(default_factory=RunStatistics)
    start_time: Time | None = Field(default=None, description="When the workflow started")
    completion_time: Time | None = Field(default=None, description="When the run ended")
    latest_results: list[FileResult] = Field(
        default_factory=list,
        max_length=MAX_LATEST_RESULTS,
        description="The most recent file results",
    )
    report_config_map: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="ConfigMap, owned by the run, with the full report and patch",
    )
    coordinator: str | None = Field(
        default=None, max_length=253, description="TarsReplica whose coordinator runs the workflow"
    )
    branch: str | None = Field(
        default=None,
        max_length=255,
        description="Git branch holding applied improvements (git source)",
    )
    sandbox: str | None = Field(
        default=None,
        max_length=SANDBOX_DETAIL_MAX_LENGTH,
        description="How the latest test run was isolated, or why it was not",
    )
    test_environment: str | None = Field(
        default=None,
        max_length=SANDBOX_DETAIL_MAX_LENGTH,
        description="The virtualenv the tests ran in: built (and how long it took) or reused",
    )
    conditions: list[Condition] = conditions_field()
    observed_generation: int | None = observed_generation_field()


class SelfCodingRun(ApiObject):
    """One run of the self-coding workflow."""

    resource = ResourceInfo(
        kind="SelfCodingRun",
        plural=SELF_CODING_RUN_PLURAL,
        singular="selfcodingrun",
        short_names=("scr",),
        printer_columns=(
            PrinterColumn(
                name="Phase", type="string", json_path=".status.phase", description="Phase"
            ),
            PrinterColumn(
                name="Stage", type="string", json_path=".status.stage", description="Stage"
            ),
            PrinterColumn(
                name="Progress",
                type="string",
                json_path=".status.progress",
                description="Files done / files selected",
            ),
            PrinterColumn(
                name="Applied",
                type="integer",
                json_path=".status.statistics.improvementsApplied",
                description="Improvements applied",
            ),
            PrinterColumn(
                name="Current",
                type="string",
                json_path=".status.currentFile",
                description="File being worked on",
                priority=1,
            ),
            AGE_COLUMN,
        ),
    )

    kind: Literal["SelfCodingRun"] = "SelfCodingRun"
    spec: SelfCodingRunSpec
    status: SelfCodingRunStatus | None = None

    @property
    def is_terminal(self) -> bool:
        """The run has ended (Succeeded, Failed or Stopped): nothing will change it again."""
        return (
            self.status is not None
            and self.status.phase is not None
            and self.status.phase.is_terminal
        )

    @classmethod
    def build(
        cls,
        name: str,
        targets: list[str],
        source: RunSource,
        *,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        **spec: Any,
    ) -> SelfCodingRun:
        """A new run: `SelfCodingRun.build("r1", ["src"], RunSource(git=GitSource(url=...)))`."""
        return cls(
            metadata={"name": name, "namespace": namespace, "labels": labels or {}},
            spec=SelfCodingRunSpec.build_strict(targets=targets, source=source, **spec),
        )
