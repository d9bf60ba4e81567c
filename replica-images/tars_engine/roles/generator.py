"""Generator role: one candidate change per request, from the static or the ollama engine.

Whatever the engine, the result goes through `validation.finish_candidate`, so a
candidate that escapes its file, edits a test, breaks parsing or changes nothing
never leaves the generator.
"""

from __future__ import annotations

import difflib
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field
from tars_api.vocabulary import EngineName, Role

from tars_engine.core.diffs import apply_unified_diff
from tars_engine.core.models import (
    DropCause,
    DroppedRule,
    Finding,
    GenerateRequest,
    GenerateResult,
    Location,
    ModelCheck,
    ModelCheckRequest,
    RoleInfo,
    SourceFile,
)
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.validation import finish_candidate, path_rejection, syntax_problem
from tars_engine.roles import codemods, ruff_tool
from tars_engine.roles.ollama_client import OllamaError
from tars_engine.roles.ollama_engine import OllamaEngine, model_findings

# Rounds of fixing what the previous fixes introduced: ruff's own fix loop stops at 100,
# but a chain of rules each enabling the next is short in practice.
MAX_FIX_ROUNDS = 4


class FixedPoint(BaseModel):
    """What fixing some rules, and then what their fixes left behind, made of a file."""

    model_config = ConfigDict(frozen=True)

    content: str
    fixed: dict[str, int] = Field(description="per rule asked for: findings its fixes removed")
    follow_ups: list[str] = Field(description="rules fixed because the fixes introduced them")
    introduced: list[str] = Field(
        description="rules with more findings than before that no fix allowed here removes"
    )


def fixable_rules(findings: list[Finding], allow_unsafe: bool) -> tuple[list[str], list[str]]:
    """(rules the static engine may fix in this run, rules whose fixes need unsafe fixes)."""
    allowed, unsafe_only = set(), set()
    for finding in findings:
        if not (finding.source.fixed_statically and finding.fix_available):
            continue
        if finding.fix_safe or allow_unsafe:
            allowed.add(finding.rule)
        else:
            unsafe_only.add(finding.rule)
    return sorted(allowed), sorted(unsafe_only - allowed)


def project_fixable(source: SourceFile, unsafe: bool) -> set[str]:
    """Rules whose findings in `source` the project lets ruff fix, as this run allows.

    `--fixable` on the command line overrides the project's `unfixable`, so a rule the
    engine adds to a fix on its own account must first be asked of the project's settings.
    """
    return {d.code for d in ruff_tool.check(source) if d.fix_available and (d.fix_safe or unsafe)}


def finding_counts(source: SourceFile, rules: list[str]) -> Counter[str]:
    """Every ruff finding in `source`, and the sites of the codemods among `rules`."""
    return Counter(d.code for d in ruff_tool.check(source)) + codemods.counts(source, rules)


def fix_rules(source: SourceFile, rules: list[str], *, unsafe: bool) -> tuple[str, Counter[str]]:
    """The content with the fixes for `rules` applied, and the ruff findings left in it.

    A codemod is a rule like ruff's, with its own fixer. Codemods go last, on what ruff's
    fixes made, and change every site they would count: none of theirs is left.
    """
    ruff_rules = [rule for rule in rules if not codemods.is_codemod_rule(rule)]
    content, remaining = source.content, None
    if ruff_rules:
        content, remaining = ruff_tool.fix(source, ruff_rules, unsafe=unsafe)
    annotated = codemods.fix(source.with_content(content), rules)
    if remaining is None or annotated != content:
        remaining = ruff_tool.check(source.with_content(annotated))
    return annotated, Counter(d.code for d in remaining)


def fix_to_fixed_point(
    source: SourceFile, before: Counter[str], rules: list[str], unsafe: bool
) -> FixedPoint:
    """The static fixes for `rules`, then, as ruff itself does, fixes for what they introduced,
    to a fixed point: a finding they introduced is a follow-up when this run may fix it."""
    follow_ups: set[str] = set()
    content, after = fix_rules(source, rules, unsafe=unsafe)
    for _ in range(MAX_FIX_ROUNDS):
        introduced = {code for code in after if after[code] > before[code]}
        fixable = project_fixable(source.with_content(content), unsafe) if introduced else set()
        new_follow_ups = (introduced & fixable) - follow_ups - set(rules)
        if not new_follow_ups:
            break
        follow_ups |= new_follow_ups
        content, after = fix_rules(
            source.with_content(content), [*rules, *follow_ups], unsafe=unsafe
        )
    return FixedPoint(
        content=content,
        fixed={rule: before[rule] - after[rule] for rule in rules if before[rule] > after[rule]},
        follow_ups=sorted(follow_ups),
        introduced=sorted(code for code in after if after[code] > before[code]),
    )


def clean_fixes(
    source: SourceFile, before: Counter[str], rules: list[str], unsafe: bool
) -> tuple[FixedPoint | None, list[DroppedRule]]:
    """The fixed point of `rules` less every rule whose fix introduces something this run
    cannot fix, and those rules with why; None when no rule is left.

    Rules are added one at a time, in order, each kept when the fixes so far stay clean
    with it: deterministic, and at most one fixed point more per rule.
    """
    point = fix_to_fixed_point(source, before, rules, unsafe)
    if not point.introduced:
        return point, []
    kept: list[str] = []
    best: FixedPoint | None = None
    dropped: list[DroppedRule] = []
    for rule in rules:
        trial = fix_to_fixed_point(source, before, [*kept, rule], unsafe)
        if not trial.introduced:
            kept.append(rule)
            best = trial
            continue
        alone = trial if not kept else fix_to_fixed_point(source, before, [rule], unsafe)
        together = "" if alone.introduced else f" together with the fixes of {', '.join(kept)}"
        dropped.append(
            DroppedRule(
                rule=rule,
                cause=DropCause.unfixable_follow_up,
                reason=f"its fix introduces {', '.join(trial.introduced)}{together}, "
                "which this run cannot fix",
            )
        )
    return best, dropped


def _rationale(point: FixedPoint, dropped: list[DroppedRule], findings: list[Finding]) -> str:
    first_message: dict[str, str] = {}
    for finding in findings:
        first_message.setdefault(finding.rule, finding.message)
    lines = ["Apply the static fixes (ruff's and TARS's codemods):"]
    lines += [
        f"- {rule} ({count} fixed): {first_message[rule]}"
        for rule, count in sorted(point.fixed.items())
    ]
    lines += [f"- {rule}: cleanup of what the fixes above left behind" for rule in point.follow_ups]
    lines += [f"- {drop.rule} left out: {drop.reason}" for drop in dropped]
    return "\n".join(lines)


def static_generate(request: GenerateRequest) -> GenerateResult:
    """Ruff's fixes and TARS's codemods for the request's fixable findings (of `request.rules`
    when it names some), less the rules whose fixes make things worse, as a validated
    candidate."""
    source = request.file
    rules, unsafe_only = fixable_rules(request.findings, request.allow_unsafe_fixes)
    if request.rules is not None:
        rules = [rule for rule in rules if rule in request.rules]
    if not rules:
        reason = "no ruff-fixable findings among those selected"
        if unsafe_only:
            reason += (
                f" ({', '.join(unsafe_only)} need unsafe fixes, which this run does not allow)"
            )
        return GenerateResult(candidate=None, rejection=reason)
    if syntax_problem(source.content):
        return GenerateResult(candidate=None, rejection="file does not parse; ruff cannot fix it")
    unsafe = request.allow_unsafe_fixes
    try:
        before = finding_counts(source, rules)
        point, dropped = clean_fixes(source, before, rules, unsafe)
    except ruff_tool.RuffError as exc:
        return GenerateResult(candidate=None, rejection=f"ruff failed: {exc}")
    if point is None:
        return GenerateResult(
            candidate=None,
            rejection="no rule's fix is clean: "
            + "; ".join(f"{drop.rule}: {drop.reason}" for drop in dropped),
            dropped_rules=dropped,
        )
    if not point.fixed:
        return GenerateResult(
            candidate=None, rejection="ruff's fixes changed nothing", dropped_rules=dropped
        )
    kinds = sorted(
        {f.kind for f in request.findings if f.rule in point.fixed}, key=lambda k: k.value
    )
    result = finish_candidate(
        request,
        point.content,
        rationale=_rationale(point, dropped, request.findings),
        rules=sorted({*point.fixed, *point.follow_ups}),
        kinds=kinds,
    )
    return result.model_copy(update={"dropped_rules": dropped})


def moved_findings(findings: list[Finding], before: str, after: str) -> list[Finding]:
    """`findings` about `before`, placed on the lines they stand on in `after`.

    The static fixes go first and may delete or add lines (F401 drops imports); the
    model's tasks are cut from the fixed content, so their findings must point into it.
    A finding on a line that was rewritten moves to where the rewrite stands.
    """
    if before == after:
        return findings
    old_lines, new_lines = before.splitlines(), after.splitlines()
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    new_line: dict[int, int] = {}
    for _, old_start, old_end, new_start, new_end in matcher.get_opcodes():
        for offset, old in enumerate(range(old_start, old_end)):
            new_line[old + 1] = min(new_start + offset, max(new_end - 1, new_start)) + 1
    last = max(1, len(new_lines))
    return [
        finding.model_copy(
            update={
                "location": Location(
                    line=min(new_line.get(finding.location.line, finding.location.line), last)
                )
            }
        )
        for finding in findings
    ]


class Generator:
    """The generator role in-process; the request's engine picks static or ollama.

    With the ollama engine the static engine still goes first: ruff's fixes for what
    they cover, then the model's tasks for the rest, on top, in one candidate.
    """

    def __init__(self, settings: ReplicaSettings | None = None) -> None:
        self.settings = settings or ReplicaSettings.from_env()
        self._model: OllamaEngine | None = None

    def info(self) -> RoleInfo:
        capabilities = ["ruff-fixes", "codemods", "validation"]
        if self.settings.engine is EngineName.ollama:
            capabilities += ["ollama", "search-replace-edits", "few-shot-examples"]
        return self.settings.role_info(Role.generator, capabilities)

    def model(self) -> OllamaEngine:
        if self._model is None:
            self._model = OllamaEngine(self.settings)
        return self._model

    def cancel_generation(self, request_id: str) -> None:
        """Stop the model's answer for `request_id`, or the one it has yet to start."""
        if self.settings.engine is EngineName.ollama or self._model is not None:
            self.model().cancel(request_id)

    def check_model(self, request: ModelCheckRequest) -> ModelCheck:
        model = request.model or self.settings.model
        try:
            profile = self.model().preflight(model)
        except OllamaError as exc:
            return ModelCheck(model=model, problem=str(exc))
        return ModelCheck(
            model=model,
            server_version=profile.version,
            context_length=profile.context_length,
            num_ctx=profile.num_ctx,
            tokens_per_second=round(profile.tokens_per_second, 1),
            prompt_tokens_per_second=round(profile.prompt_tokens_per_second, 1),
        )

    def generate(self, request: GenerateRequest) -> GenerateResult:
        rejection = path_rejection(request.file.path, request.targets)
        if rejection:
            return GenerateResult(candidate=None, rejection=rejection)
        if request.engine is not EngineName.ollama:
            return static_generate(request)
        return self._static_then_model(request)

    def _static_then_model(self, request: GenerateRequest) -> GenerateResult:
        source = request.file
        content, rationale, rules = source.content, [], []
        static = static_generate(request)
        if static.candidate is not None:
            content = apply_unified_diff(source.content, static.candidate.diff, source.path)
            rationale.append(static.candidate.rationale)
            rules.extend(static.candidate.rules)
        asked = moved_findings(model_findings(request.findings), source.content, content)
        change = self.model().improve(request, content, asked) if asked else None
        if change is not None and change.addressed:
            content = change.content
            rules.extend(sorted({finding.rule for finding in change.addressed}))
            rationale.append(
                "Model-proposed change: " + (" ".join(change.explanations) or "see the diff")
            )
        tokens = change.tokens_used if change is not None else 0
        if change is not None and change.rejections:
            rationale.append("Model tasks refused: " + "; ".join(change.rejections))
        if content == source.content:
            reasons = [r for r in [static.rejection, *(change.rejections if change else [])] if r]
            return GenerateResult(
                candidate=None,
                rejection="; ".join(reasons) or "no change proposed",
                dropped_rules=static.dropped_rules,
                tokens_used=tokens,
            )
        kinds = {f.kind for f in request.findings if f.rule in rules}
        result = finish_candidate(
            request,
            content,
            rationale="\n\n".join(rationale),
            rules=sorted(set(rules)),
            kinds=sorted(kinds, key=lambda kind: kind.value),
            model=request.model if change is not None and change.addressed else None,
            tokens_used=tokens,
        )
        return result.model_copy(update={"dropped_rules": static.dropped_rules})
