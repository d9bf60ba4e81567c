"""Learn: every outcome of a candidate, kept in SQLite, feeding priorities and examples.

One row per (candidate, rule): the finding kind, the rule, the engine and model,
whether the change was accepted or why it was rejected, and the test result. A rule
the generator left out of a file's change (its fix introduced what the run could not
fix) is a row of its own, marked dropped: it counts against the rule, not the file.
Two questions are asked of it:

- how well does a rule's change fare? Rules whose changes pass their tests raise
  a file's priority; rules whose changes keep failing lower it;
- which accepted changes show a rule being fixed well? They become the model's
  few-shot examples.

Local runs keep one store per user (so learning carries across projects):
`$TARS_LEARNING_DB`, else `$XDG_STATE_HOME/tars/learning.sqlite3`, else
`~/.local/state/tars/learning.sqlite3`. Runs in a cluster keep it in the run's
state directory.

The store holds code diffs of every project it has seen, so only its owner may read
it: the file is 0600 and a directory made for it 0700. A database that SQLite finds
corrupt is moved aside (the store says where, in `set_aside`) and a fresh one is
started, so a damaged file costs what was learned but never blocks a run.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from tars_api.vocabulary import EngineName

from tars_engine.core.models import Candidate, Finding, FindingKind, LearnedExample

LEARNING_DB_FILENAME = "learning.sqlite3"
LEARNING_DB_ENV = "TARS_LEARNING_DB"
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700
# The SQLite result codes of a damaged file (anything else, such as a locked or
# unopenable database, is not the file's fault).
CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
# A rule's boost per finding is in [-BOOST_SCALE/2, +BOOST_SCALE/2]: the
# Laplace-smoothed acceptance rate, centred on an unknown rule's 0.5.
BOOST_SCALE = 2.0
# A file's own history says more about it than how a rule fares elsewhere.
FILE_BOOST_WEIGHT = 2.0
MAX_EXAMPLE_DIFF_CHARS = 4000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at REAL NOT NULL,
    attempt_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    project TEXT NOT NULL,
    candidate_id TEXT NOT NULL,
    path TEXT NOT NULL,
    rule TEXT NOT NULL,
    kind TEXT NOT NULL,
    engine TEXT NOT NULL,
    model TEXT,
    accepted INTEGER NOT NULL,
    rejection TEXT,
    tests_passed INTEGER,
    diff TEXT NOT NULL,
    dropped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outcomes_rule ON outcomes (rule, engine);
CREATE INDEX IF NOT EXISTS outcomes_file ON outcomes (project, path);
"""
# Columns added since the first schema: a store an older version made gets them on opening.
_ADDED_COLUMNS = {"dropped": "INTEGER NOT NULL DEFAULT 0"}


def default_learning_db() -> Path:
    explicit = os.environ.get(LEARNING_DB_ENV)
    if explicit:
        return Path(explicit)
    return _user_learning_dir() / LEARNING_DB_FILENAME


def _user_learning_dir() -> Path:
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "tars"


def user_learning_store() -> LearningStore:
    """The per-user store of local runs (see the module's docstring for where it lives)."""
    path = default_learning_db()
    # The default directory is TARS's own: one an older version made world-readable is
    # closed too. A directory the user named through $TARS_LEARNING_DB is left as it is.
    return LearningStore(path, private_directory=path.parent == _user_learning_dir())


class LearningError(RuntimeError):
    """The learning database cannot be used, not even afresh (unwritable, not a file, ...)."""


class SetAside(BaseModel):
    """A corrupt learning database, moved aside so that a fresh one could be started."""

    model_config = ConfigDict(frozen=True)

    original: Path
    moved_to: Path
    reason: str

    @property
    def warning(self) -> str:
        return (
            f"the learning database {self.original} is corrupt ({self.reason}); moved it to "
            f"{self.moved_to} and started a fresh one"
        )


class Outcome(BaseModel):
    """What happened to one attempt at a file: accepted, or the reason it was not."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    project: str = Field(description="the project's root, so a file's own history can be found")
    path: str
    rules: list[str]
    kinds: list[FindingKind]
    engine: EngineName
    model: str | None = None
    candidate_id: str | None = Field(default=None, description="None: no candidate was produced")
    diff: str = ""
    accepted: bool
    rejection: str | None = None
    tests_passed: bool | None = Field(default=None, description="None: never reached the tests")
    dropped: bool = Field(
        default=False,
        description="a rule left out of the change: its fix introduced what the run could not fix",
    )

    @classmethod
    def of_candidate(
        cls,
        run_id: str,
        project: str,
        candidate: Candidate,
        *,
        accepted: bool,
        rejection: str | None = None,
        tests_passed: bool | None = None,
    ) -> Outcome:
        return cls(
            run_id=run_id, project=project, path=candidate.path, rules=candidate.rules, kinds=candidate.kinds,
            engine=candidate.engine, model=candidate.model, candidate_id=candidate.id,
            diff=candidate.diff, accepted=accepted, rejection=rejection, tests_passed=tests_passed,
        )  # fmt: skip


class TrackRecord(BaseModel):
    """How often changes for one rule (or to one file) passed their tests."""

    model_config = ConfigDict(frozen=True)

    key: str
    accepted: int
    total: int

    @property
    def boost(self) -> float:
        rate = (self.accepted + 1) / (self.total + 2)
        return (rate - 0.5) * BOOST_SCALE


class _Corrupt(Exception):
    """SQLite found the database file damaged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _make_private(path: Path, *, private_directory: bool) -> None:
    """The database file exists, readable by its owner only; a directory made for it too."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=PRIVATE_DIRECTORY_MODE)
    elif private_directory and path.parent.stat().st_mode & 0o077:
        path.parent.chmod(PRIVATE_DIRECTORY_MODE)
    # Created here rather than by SQLite, which would make it 0644; SQLite gives its
    # journal the database's own mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
    if path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_FILE_MODE)


def _move_aside(path: Path, reason: str) -> SetAside:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved_to = path.with_name(f"{path.name}.corrupt-{stamp}")
    serial = 1
    while moved_to.exists():
        serial += 1
        moved_to = path.with_name(f"{path.name}.corrupt-{stamp}-{serial}")
    path.rename(moved_to)
    return SetAside(original=path, moved_to=moved_to, reason=reason)


class LearningStore:
    """Thread-safe access to the outcome store; every call opens its own short transaction."""

    def __init__(self, path: Path, *, private_directory: bool = False) -> None:
        """Open (or create) the store at `path`; `private_directory`: its directory is the
        store's own, closed to everyone else even when it already exists."""
        self.path = path
        self._lock = threading.Lock()
        self.set_aside: SetAside | None = None
        try:
            _make_private(path, private_directory=private_directory)
            try:
                self._open()
            except _Corrupt as corrupt:
                self.set_aside = _move_aside(path, corrupt.reason)
                _make_private(path, private_directory=False)
                self._open()
        except (OSError, sqlite3.Error, _Corrupt) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LearningError(
                f"cannot use the learning database {path}: {reason}; "
                f"set {LEARNING_DB_ENV} to a file it can use, or keep the run out of learning "
                "(--no-learning)"
            ) from exc

    def _open(self) -> None:
        """Create the tables if need be and check the file; _Corrupt when SQLite finds it damaged."""
        try:
            with self._connect() as connection:
                connection.executescript(_SCHEMA)
                present = {row[1] for row in connection.execute("PRAGMA table_info(outcomes)")}
                for column, declaration in _ADDED_COLUMNS.items():
                    if column not in present:
                        connection.execute(
                            f"ALTER TABLE outcomes ADD COLUMN {column} {declaration}"
                        )
                problems = [row[0] for row in connection.execute("PRAGMA quick_check(1)")]
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode in CORRUPTION_CODES:
                raise _Corrupt(str(exc)) from exc
            raise
        if problems != ["ok"]:
            raise _Corrupt(f"integrity check: {'; '.join(problems)}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = sqlite3.connect(self.path, timeout=30)
            try:
                with connection:
                    yield connection
            finally:
                connection.close()

    def record(self, outcome: Outcome) -> None:
        kinds = outcome.kinds or [FindingKind.maintainability]
        rules = outcome.rules or ["unspecified"]
        # Rules and kinds pair up when the generator gives one kind per rule;
        # otherwise every rule is recorded under the first kind.
        paired = kinds if len(kinds) == len(rules) else [kinds[0]] * len(rules)
        recorded_at, attempt_id = time.time(), uuid.uuid4().hex
        rows = [
            (
                recorded_at,
                attempt_id,
                outcome.run_id,
                outcome.project,
                outcome.candidate_id or "",
                outcome.path,
                rule,
                kind.value,
                outcome.engine.value,
                outcome.model,
                int(outcome.accepted),
                outcome.rejection,
                None if outcome.tests_passed is None else int(outcome.tests_passed),
                outcome.diff[:MAX_EXAMPLE_DIFF_CHARS],
                int(outcome.dropped),
            )
            for rule, kind in zip(rules, paired, strict=True)
        ]
        with self._connect() as connection:
            connection.executemany(
                "INSERT INTO outcomes (recorded_at, attempt_id, run_id, project, candidate_id, path,"
                " rule, kind, engine, model, accepted, rejection, tests_passed, diff, dropped)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def rule_records(self, engine: EngineName | None = None) -> dict[str, TrackRecord]:
        query = "SELECT rule, SUM(accepted), COUNT(*) FROM outcomes"
        parameters: tuple[str, ...] = ()
        if engine is not None:
            query += " WHERE engine = ?"
            parameters = (engine.value,)
        with self._connect() as connection:
            rows = connection.execute(query + " GROUP BY rule", parameters).fetchall()
        return {
            rule: TrackRecord(key=rule, accepted=accepted, total=total)
            for rule, accepted, total in rows
        }

    def file_records(self, project: str) -> dict[str, TrackRecord]:
        """Per file of `project`: how many attempts (not rules) were made and accepted."""
        # One attempt writes one row per rule, all with the same attempt id; a dropped rule
        # is no attempt at the file.
        query = (
            "SELECT path, COUNT(DISTINCT CASE WHEN accepted = 1 THEN attempt_id END),"
            " COUNT(DISTINCT attempt_id) FROM outcomes WHERE project = ? AND dropped = 0"
            " GROUP BY path"
        )
        with self._connect() as connection:
            rows = connection.execute(query, (project,)).fetchall()
        return {
            path: TrackRecord(key=path, accepted=accepted, total=total)
            for path, accepted, total in rows
        }

    @staticmethod
    def priority_boost(
        findings: Sequence[Finding],
        rule_records: dict[str, TrackRecord],
        file_record: TrackRecord | None = None,
    ) -> float:
        """How much learning moves a file's priority: its rules' track records (once per rule)
        and, weighted more, the file's own history in this project."""
        rules = sum(
            rule_records[rule].boost for rule in {f.rule for f in findings} if rule in rule_records
        )
        own = file_record.boost * FILE_BOOST_WEIGHT if file_record is not None else 0.0
        return rules + own

    def examples(
        self, rules: Iterable[str], engine: EngineName | None = None, limit: int = 3
    ) -> list[LearnedExample]:
        """Recent accepted changes fixing the same rules: the model's few-shot examples."""
        wanted = sorted(set(rules))
        if not wanted:
            return []
        placeholders = ",".join("?" for _ in wanted)
        query = (
            f"SELECT rule, kind, diff FROM outcomes WHERE accepted = 1 AND rule IN ({placeholders})"
        )
        parameters: list[str] = list(wanted)
        if engine is not None:
            query += " AND engine = ?"
            parameters.append(engine.value)
        query += " ORDER BY recorded_at DESC, id DESC"
        with self._connect() as connection:
            rows = connection.execute(query, parameters).fetchall()
        examples: list[LearnedExample] = []
        seen_rules: set[str] = set()
        seen_diffs: set[str] = set()
        # One example per rule first, so a few rules do not crowd out the rest.
        for rule, kind, diff in rows:
            if rule in seen_rules or diff in seen_diffs:
                continue
            seen_rules.add(rule)
            seen_diffs.add(diff)
            examples.append(LearnedExample(rule=rule, kind=FindingKind(kind), diff=diff))
            if len(examples) == limit:
                break
        return examples

    def count(self) -> int:
        with self._connect() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])
