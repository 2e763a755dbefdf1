"""The decision: facts about one spine MRI order in, a verdict with its reasons out.

Pure functions only (no I/O, no clock: `facts.as_of` is "today"). What counts for this order
is decided in `findings`; here the rules are checked in the order a spine physician would:
urgent red flags first (every one read and combined: the most urgent priority, every next step,
the dominant diagnosis named first), then a finding that would be urgent if new but that the record
cannot date (the card asks: new or old?), follow-up of a known condition, a fragility fracture,
trauma, prior surgery, infection risk, demyelinating disease, a child's back pain, radiculopathy,
fracture risk, the weaker risk factors, and last the verdicts without a red flag. A possible red
flag the record cannot settle (a result not yet verified, numbness whose site is not coded) leads
any non-urgent verdict as a question, and the card then never recommends cancelling.
A rule whose first study is done answers with the next step only when that study's question is
still open; an MRI of the region in the last 12 months makes a non-urgent order a repeat.

The variant ids name entries in mappings/guidelines.yaml; the PAMA rating is ACR's rating of the
ordered study in that variant (`acr_ratings`), where mappings give one.
Where guidelines disagree the choice is made here, in a comment beside the rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from .findings import (
    EPISODE_CONCEPTS,
    FOCAL_DEFICIT_CONCEPTS,
    POSSIBLE_DEFICIT_CONCEPTS,
    POST_PROCEDURE_DAYS,
    PRIOR_IMAGING_DAYS,
    VARIANTS,
    Findings,
    steroid_days,
)
from .model import FROM_ORDER, Evidence, Facts, NextStep, Verdict
from .wording import (
    REGION_WORDS,
    finding_name,
    finding_words,
    format_ago,
    format_weeks,
    lower_first,
    sentence,
    study_words,
)

if TYPE_CHECKING:
    from .mappings import Mappings

__all__ = ["decide", "format_weeks", "knowledge_gaps", "pama_rating", "steroid_days"]

# ----------------------------------------------------------------------------- parameters
# ACR LBP 2021 V1/V2, Choosing Wisely (AAFP, NASS, ACR): no imaging in the first 6 weeks.
ACUTE_WEEKS = 6
# ACR LBP 2021 V3: persistent symptoms "during or following 6 weeks of optimal medical management".
THERAPY_TRIAL_WEEKS = 6
# ACP/APS 2007: weaker cancer risk (age > 50, weight loss) -> radiographs after ~1 month.
ACP_TRIAL_WEEKS = 4
# Canadian C-spine rule (Stiell 2001): age >= 65 is a high-risk factor after neck trauma.
CCR_AGE = 65

INFECTION_RISK_CONCEPTS = ("ivdu", "immunosuppression")
# With raised ESR, CRP or WBC these make infection the question (ACR Suspected Spine Infection
# lists diabetes with injection drug use, cancer, HIV and dialysis); diabetes alone does not.
MARKER_RISK_CONCEPTS = (*INFECTION_RISK_CONCEPTS, "diabetes")
FRACTURE_RISK_CONCEPTS = ("osteoporosis_fracture", "long_term_steroids")
ANKYLOSED_SPINE_CONCEPTS = ("axial_spa", "dish")
INJURY_CONCEPTS = ("trauma", "recent_injury", "vertebral_fracture")
# A child's red flags the record can show (ACR Back Pain-Child V2; the pediatric red-flag table
# its literature gives, AJNR: weight loss, steroids, raised markers, pain over 4 weeks, under 5).
CHILD_RED_FLAGS = ("weight_loss", "long_term_steroids", "osteoporosis_fracture", "inflammatory_markers", "axial_spa")
CHILD_PAIN_WEEKS = 4
CHILD_YOUNG_AGE = 5
# What a demyelinating disease's new cord symptom can be coded as (ACR Myelopathy).
CORD_SYMPTOM_CONCEPTS = ("paresthesia", "numbness", "possible_motor_deficit", "progressive_neuro_deficit", "myelopathy")
# The red flags the card reports as "checked", per region (C16: a neck card never names the
# cauda equina). The evidence page lists each: found, not counted and why, or not in the record.
# Read on every region: the cord or cauda equina at risk, infection and cancer, an injury's
# consequences, and what changes the imaging itself.
_DEFICITS = ("epidural_abscess", "progressive_neuro_deficit", "possible_motor_deficit")
_INFECTION_AND_CANCER = (
    "cancer",
    "cancer_history",
    "spinal_infection",
    "fever",
    "bacteremia_sepsis",
    "inflammatory_markers",
    "ivdu",
    "immunosuppression",
)
_PROCEDURES = ("neuraxial_procedure", "prior_spine_surgery")
_FRAGILITY = ("osteoporosis_fracture", "long_term_steroids", "weight_loss")
_ANKYLOSED = ("axial_spa", "dish")
CHECKED_RED_FLAGS = {
    "lumbar": (
        "cauda_equina",
        *_DEFICITS,
        *_INFECTION_AND_CANCER,
        "trauma",
        "recent_injury",
        "vertebral_fracture",
        *_PROCEDURES,
        *_FRAGILITY,
        *_ANKYLOSED,
        "pregnancy",
    ),
    "cervical": (
        "myelopathy",
        *_DEFICITS,
        "spinal_cord_injury",
        *_INFECTION_AND_CANCER,
        "trauma",
        "recent_injury",
        "dangerous_mechanism",
        "paresthesia",
        *_PROCEDURES,
        *_ANKYLOSED,
        "demyelinating_disease",
        "pregnancy",
    ),
    "thoracic": (
        "myelopathy",
        *_DEFICITS,
        "spinal_cord_injury",
        *_INFECTION_AND_CANCER,
        "trauma",
        "recent_injury",
        "vertebral_fracture",
        *_PROCEDURES,
        *_FRAGILITY,
        *_ANKYLOSED,
        "demyelinating_disease",
        "pregnancy",
    ),
}
# In the record, reported with the red flags found, though never asked as absent: risks that
# count only with others (diabetes with raised markers) or that the card asks about.
REPORTED_RISKS = ("diabetes", "stimulant_use", "arthrodesis_status", "numbness")
# Red flags of any region, and the emergencies every order reads.
ANY_RED_FLAG = frozenset(c for region in CHECKED_RED_FLAGS.values() for c in region) | {"cauda_equina"}
# What would change a verdict without a red flag, per region, and the concepts each item names
# (an item is asked only when none of its concepts is in the record).
TO_ASK = {
    "lumbar": [
        ("leg weakness, saddle numbness or urinary retention", ("cauda_equina", "progressive_neuro_deficit")),
        ("fever, injection drug use or immunosuppression", ("fever", "ivdu", "immunosuppression")),
        ("cancer history or weight loss", ("cancer", "cancer_history", "weight_loss")),
        ("osteoporosis, long-term steroids or a recent injury", ("osteoporosis_fracture", "long_term_steroids")),
        ("sciatica after 6 weeks of therapy in a surgical candidate", ("radiculopathy",)),
    ],
    "cervical": [
        ("arm weakness, hand clumsiness or a gait change", ("myelopathy", "progressive_neuro_deficit")),
        ("fever, injection drug use or immunosuppression", ("fever", "ivdu", "immunosuppression")),
        ("cancer history", ("cancer", "cancer_history")),
        ("a recent injury (Canadian C-spine rule)", ("recent_injury", "trauma")),
        ("arm pain or numbness for over 6 weeks (radiculopathy)", ("radiculopathy",)),
    ],
    "thoracic": [
        ("leg weakness, a gait change or a sensory level", ("myelopathy", "progressive_neuro_deficit")),
        ("fever, injection drug use or immunosuppression", ("fever", "ivdu", "immunosuppression")),
        ("cancer history or weight loss", ("cancer", "cancer_history", "weight_loss")),
        ("osteoporosis, long-term steroids or a recent injury", ("osteoporosis_fracture", "long_term_steroids")),
        ("night or non-mechanical pain; a chest or abdominal cause", ()),
    ],
}
# Thoracic verdicts that rest on lumbar evidence by analogy (PAMA: no criteria apply).
EXTRAPOLATED_THORACIC = {
    "LBP-V3",
    "LBP-V5",
    "LBP-V6",
    "LBP-V7",
    "LBP-ACP-DEFER",
    "TH-NONSPECIFIC",
    "TH-VCF",
}
# PAMA rating when the mappings give no ACR rating of the ordered study in the variant.
RATING = {
    "indicated-urgent": "appropriate",
    "indicated-routine": "appropriate",
    # The guideline's first study is another one: ordering MRI first does not adhere.
    "radiographs-first": "not-appropriate",
    "low-value": "not-appropriate",
}
# ACR's words; "May Be Appropriate" adheres under the Argonaut PAMA IG.
ADHERENT_RATINGS = ("usually-appropriate", "may-be-appropriate")
# ServiceRequest.priority, from least to most urgent.
PRIORITY_ORDER = ("routine", "urgent", "asap", "stat")


def _why(items: list[Evidence], as_of: date) -> list[str]:
    """Each decisive finding once, with its value and date: one entry coded as two concepts (a
    fracture that is also an injury) is named once."""
    seen: dict[str, str] = {}
    for item in items:
        key = item.reference if item.reference.startswith(("Condition/", "Observation/")) else item.concept_id
        seen.setdefault(key, finding_words(item, as_of))
    return list(dict.fromkeys(seen.values()))


def _pain(ctx: Findings) -> str:
    """The episode in clinical words: "sciatica for 3 weeks", "neck pain (duration not recorded)"."""
    if ctx.has("radiculopathy"):
        what = {"lumbar": "sciatica", "cervical": "cervical radiculopathy", "thoracic": "thoracic radiculopathy"}.get(
            ctx.rule_region, "radiculopathy"
        )
    elif ctx.has("stenosis"):
        what = f"{ctx.rule_region} spinal stenosis"
    else:
        what = REGION_WORDS.get(ctx.region, "back") + " pain"
    if ctx.episode_weeks is None or ctx.episode_start is None:
        return f"{what} (duration not recorded)"
    if ctx.episode_dated_by == "recorded":
        return f"{what}, recorded {format_ago(ctx.episode_start, ctx.as_of)}"
    return f"{what} for {format_weeks(ctx.episode_weeks)}"


def _ask(ctx: Findings, extra: list[str] | None = None) -> list[str]:
    """What would change a verdict without a red flag: the record's entries to confirm first, then
    this region's red flags that are not in the record ("not in the record: ask or examine")."""
    items = list(ctx.to_confirm)
    for item, why in ctx.not_counted:
        if why.startswith(("dated ", "recorded ")) and item.concept_id in CHECKED_RED_FLAGS[ctx.rule_region]:
            when = why.split(":")[0]
            items.append(f"{item.label} {when}: is it current?")
    items += extra or []
    # A resolved entry does not answer today's question: a past cauda equina is asked about again.
    in_record = {item.concept_id for item, why in ctx.not_counted if not why.startswith("resolved")} | set(ctx.flags)
    absent = [words for words, concepts in TO_ASK[ctx.rule_region] if not in_record.intersection(concepts)]
    if absent:
        items.append("not in the record, ask or examine: " + "; ".join(absent[: max(1, 5 - len(items))]))
    return items[:5]


# ----------------------------------------------------------------------------- the rules


def decide(facts: Facts) -> Verdict:
    ctx = Findings(facts)
    verdict = _decide(ctx)
    asked = list(verdict.red_flags_found) if verdict.ask_if_new else []
    verdict = _finish(verdict, ctx)
    if asked:
        # The card's "old and stable" answer: the verdict without the findings it asks about.
        without = ctx.without(asked)
        old = _finish(_decide(without), without)
        verdict.if_old = (old.code, old.picture, old.pama_rating)
    return verdict


def _decide(ctx: Findings) -> Verdict:
    verdict = _urgent(ctx) or (
        _new_or_old(ctx)
        or _follow_up(ctx)
        or _vertebral_compression_fracture(ctx)
        or _trauma(ctx)
        or _prior_surgery(ctx)
        or _infection_risk(ctx)
        or _demyelinating(ctx)
        or _child(ctx)
        or _therapy_failed(ctx)
        or _cervical_radiculopathy(ctx)
        or _fracture_risk(ctx)
        or _weaker_risk(ctx)
        or _no_indication(ctx)
        or _no_red_flags(ctx)
    )
    verdict = _repeat_mri(ctx, verdict)
    # A red flag found is enough to call the MRI indicated; anything less needs every source.
    if not verdict.code.startswith("indicated-") and ctx.missing:
        verdict = _missing_data(ctx)
    return verdict


@dataclass
class Urgent:
    """One urgent finding: its verdict, its name in a combined picture, what to do besides the MRI."""

    verdict: Verdict
    short: str  # "new weakness": how a combined picture names it ("epidural abscess with new weakness")
    actions: list[str]  # "refer to spinal surgery today", "blood cultures before antibiotics"
    timing: str | None = None  # the MRI's timing when not the priority's ("within 24 hours")


# The MRI's timing in words, by the priority the guideline asks.
TIMING = {"stat": "MRI now (stat)", "urgent": "MRI urgently"}


def _urgent(ctx: Findings) -> Verdict | None:
    """Every urgent red flag, combined: the order made as urgent as the most urgent asks, each
    next step, the contrast the most demanding wants, and the dominant diagnosis named first (ACR
    LBP V4/V7, CN-V4/V5, Myelopathy, Suspected Spine Infection, Suspected Spine Trauma; ACP 2007;
    NICE NG234; ASRA 2018). An epidural abscess with new weakness is the abscess's card, with the
    weakness's referral; cancer with new bladder symptoms is metastatic compression.

    Suspected infection: a diagnosed spinal infection, bacteremia, a recent fever (ACP 2007 lists
    fever as a sign of infection on its own), or raised ESR/CRP/WBC with a risk factor, even
    without fever (ACR LBP V7 and Suspected Spine Infection: injection drug use, opioid use
    disorder, immunosuppression, diabetes). Raised markers alone are too unspecific (_weaker_risk).
    """
    new_deficit = [e for e in ctx.evidence(*FOCAL_DEFICIT_CONCEPTS) if ctx.is_new(e)]
    sphincter = [e for e in ctx.evidence("cauda_equina") if ctx.is_new(e)]
    myelopathy = [e for e in ctx.evidence("myelopathy") if ctx.is_new(e)]
    # NICE NG234 lists difficulty walking and sensory change among the neurological symptoms of
    # metastatic cord compression: with cancer, a new gait code or new numbness counts too.
    neurological = [e for e in ctx.evidence(*POSSIBLE_DEFICIT_CONCEPTS, "numbness") if ctx.is_new(e)]
    infection = ctx.evidence("spinal_infection", "bacteremia_sepsis", "fever")
    if ctx.has("inflammatory_markers") and ctx.has(*MARKER_RISK_CONCEPTS):
        infection += ctx.evidence("inflammatory_markers", *MARKER_RISK_CONCEPTS)
    cancer = ctx.evidence("cancer", "cancer_history")
    cord = myelopathy + sphincter + new_deficit + neurological
    checks: tuple[Callable[[], Urgent | None], ...] = (
        lambda: _cord_compression_in_cancer(ctx, cancer, cord) if cancer and cord else None,
        lambda: _epidural_abscess(ctx),
        lambda: _cauda_equina(ctx, sphincter),
        lambda: _cord_injury(ctx),
        lambda: _after_neuraxial_procedure(ctx, new_deficit),
        lambda: _suspected_infection(ctx, infection),
        lambda: _ankylosed_spine_injury(ctx),
        lambda: _myelopathy(ctx, myelopathy),
        lambda: _cancer(ctx, cancer) if not cord else None,
        lambda: _new_deficit(ctx, new_deficit),
    )
    found = [urgent for urgent in (check() for check in checks) if urgent is not None]
    if not found:
        return None
    return _combined(ctx, found)


def _combined(ctx: Findings, found: list[Urgent]) -> Verdict:
    """The first (dominant) finding's verdict, with what every other one adds."""
    verdict = found[0].verdict
    dominant = list(verdict.red_flags_found)
    priorities = [u.verdict.priority or "urgent" for u in found]
    verdict.priority = max(priorities, key=PRIORITY_ORDER.index)
    for other in found[1:]:
        more = other.verdict
        verdict.red_flags_found += [e for e in more.red_flags_found if e not in verdict.red_flags_found]
        verdict.why += [line for line in more.why if line not in verdict.why]
        kinds = {step.kind for step in verdict.next_steps}
        verdict.next_steps += [step for step in more.next_steps if step.kind not in kinds]
        verdict.guideline_ids += [g for g in more.guideline_ids if g not in verdict.guideline_ids]
        verdict.confirm += [line for line in more.confirm if line not in verdict.confirm]
        if more.contrast == "with-and-without" and verdict.contrast != "with-and-without":
            verdict.contrast, verdict.contrast_reason = more.contrast, more.contrast_reason
    # The second finding, when it adds one, joins the picture before its question:
    # "vertebral osteomyelitis in the record with new weakness: epidural abscess?"
    added = [u for u in found[1:] if any(e not in dominant for e in u.verdict.red_flags_found)]
    if added and added[0].short not in verdict.picture:
        head, colon, question = verdict.picture.partition(": ")
        verdict.picture = f"{head} with {added[0].short}{colon}{question}"
    surgery = [e for e in ctx.evidence("prior_spine_surgery") if e not in verdict.red_flags_found]
    actions = [action for urgent in found for action in urgent.actions]
    if surgery:
        # ACR LBP V5: after surgery, contrast tells a recurrent disc from scar, and shows infection.
        verdict.red_flags_found += surgery
        verdict.why += _why(surgery, ctx.as_of)
        actions.append("tell the spinal surgeon who operated")
        head, colon, question = verdict.picture.partition(": ")
        verdict.picture = f"{head} after spine surgery{colon}{question}"
        if verdict.contrast is None:
            verdict.contrast, verdict.contrast_reason = "with-and-without", "after spine surgery"
    timing = found[0].timing if verdict.priority == (found[0].verdict.priority or "urgent") else None
    # One referral, the dominant finding's: "refer to spinal surgery today" says all the others do.
    referrals = [a for a in actions if a.startswith(("refer ", "tell "))]
    actions = [a for a in actions if not a.startswith(("refer ", "tell ")) or a == referrals[0]]
    verdict.now = sentence([timing or TIMING[verdict.priority], *dict.fromkeys(actions)])
    return verdict


def _urgent_verdict(
    ctx: Findings, rule: str, picture: str, evidence: list[Evidence], priority: str, **more: object
) -> Verdict:
    verdict = Verdict(
        code="indicated-urgent",
        variant_id=ctx.variant(rule),
        picture=picture,
        why=[*_why(evidence, ctx.as_of), _pain(ctx) if ctx.episode else ""],
        priority=priority,
        red_flags_found=evidence,
        override_set="urgent",
    )
    for name, value in more.items():
        setattr(verdict, name, value)
    return verdict


SAME_DAY_REFERRAL = NextStep("surgical-referral", "refer to spinal surgery today", "ACR_LBP_2021")
BLOOD_CULTURES = NextStep("blood-cultures", "blood cultures before antibiotics", "ACR_INFX_2021")


def _epidural_abscess(ctx: Findings) -> Urgent | None:
    """A diagnosed spinal epidural abscess: a surgical emergency. MRI now, without and with
    contrast, same-day spinal surgery, blood cultures (ACR Suspected Spine Infection)."""
    evidence = ctx.evidence("epidural_abscess")
    if not evidence:
        return None
    verdict = _urgent_verdict(
        ctx,
        "epidural_abscess",
        "spinal epidural abscess in the record",
        evidence + [e for e in ctx.evidence("fever", "inflammatory_markers") if e not in evidence],
        "stat",
        next_steps=[
            NextStep("surgical-referral", "refer to spinal surgery today", "ACR_INFX_2021"),
            BLOOD_CULTURES,
        ],
        contrast="with-and-without",
        contrast_reason="epidural abscess",
        guideline_ids=["ACR_INFX_2021"],
    )
    return Urgent(
        verdict,
        "an epidural abscess",
        ["refer to spinal surgery today", "blood cultures before antibiotics"],
    )


def _cauda_equina(ctx: Findings, sphincter: list[Evidence]) -> Urgent | None:
    """New bladder, bowel or saddle symptoms (or a cauda equina diagnosis) in this episode.

    Lumbar: suspected cauda equina syndrome, emergency MRI and surgical referral (ACR LBP V4,
    NICE NG59 1.1.1). Neck or thoracic order: cord compression until shown otherwise (ACR
    Myelopathy), and the cauda equina itself is in the lumbar spine: MRI of both, at once.
    An old entry is asked about instead (_new_or_old)."""
    if not sphincter:
        return None
    if ctx.rule_region == "lumbar":
        verdict = _urgent_verdict(
            ctx,
            "cauda_equina",
            "suspected cauda equina syndrome",
            sphincter,
            "stat",
            next_steps=[SAME_DAY_REFERRAL],
            guideline_ids=["ACR_LBP_2021", "ACP_APS_2007", "NICE_NG59"],
        )
        return Urgent(verdict, "bladder or saddle symptoms", ["refer to spinal surgery today"])
    elsewhere = [e for e, why in ctx.not_counted if e.concept_id in EPISODE_CONCEPTS and "finding; this order" in why]
    pain = (
        f" with {REGION_WORDS[ctx.rule_region]} pain"
        if ctx.episode
        else f" with {lower_first(elsewhere[0].label)} (was a {elsewhere[0].region} MRI meant?)"
        if elsewhere
        else ""
    )
    verdict = _urgent_verdict(
        ctx,
        "cauda_equina",
        f"bladder, bowel or saddle symptoms{pain}: cord compression or cauda equina?",
        sphincter,
        "stat",
        next_steps=[SAME_DAY_REFERRAL, NextStep("lumbar-spine", "MRI of the lumbar spine too", "ACR_LBP_2021")],
        guideline_ids=["ACR_MYELO_2020", "ACR_LBP_2021", "NICE_NG59"],
    )
    return Urgent(
        verdict,
        "bladder or saddle symptoms",
        ["examine for myelopathy and saddle sensation", "refer to spinal surgery today"],
        timing=f"MRI now (stat) of the {ctx.rule_region} spine (cord compression) and the lumbar spine (cauda equina)",
    )


def _cord_injury(ctx: Findings) -> Urgent | None:
    """ACR Suspected Spine Trauma: suspected cord or nerve-root injury -> MRI."""
    evidence = ctx.evidence("spinal_cord_injury")
    if not evidence:
        return None
    verdict = _urgent_verdict(
        ctx,
        "spinal_cord_injury",
        "spinal cord or nerve-root injury",
        evidence,
        "stat",
        next_steps=[NextStep("surgical-referral", "refer to spinal surgery today", "ACR_TRAUMA")],
        guideline_ids=["ACR_TRAUMA"],
    )
    return Urgent(verdict, "a cord injury", ["spinal precautions", "refer to spinal surgery today"])


def _myelopathy(ctx: Findings, evidence: list[Evidence]) -> Urgent | None:
    """ACR Myelopathy 2020: myelopathy (cord compression) that is new -> MRI, urgently; refer to
    spinal surgery. A myelopathy known for longer (often operated) is asked about (_new_or_old)."""
    if not evidence:
        return None
    verdict = _urgent_verdict(
        ctx,
        "myelopathy",
        "myelopathy: suspected cord compression",
        evidence,
        "urgent",
        next_steps=[NextStep("surgical-referral", "refer to spinal surgery (cord compression)", "ACR_MYELO_2020")],
        guideline_ids=["ACR_MYELO_2020"],
    )
    return Urgent(verdict, "myelopathy", ["refer to spinal surgery (cord compression)"])


def _new_deficit(ctx: Findings, new_deficit: list[Evidence]) -> Urgent | None:
    """A focal motor deficit (foot drop, monoplegia, paresis) that is new: urgent MRI and surgical
    evaluation now (ACP 2007: severe or progressive deficits -> prompt MRI and surgical
    evaluation; CW NASS: a focal deficit or progression is a red flag). With neck or thoracic
    pain the cord comes first (ACR Myelopathy). A possible deficit (a gait disturbance, an
    unspecific weakness code) is asked about instead (_new_or_old)."""
    if not new_deficit:
        return None
    lumbar = ctx.rule_region == "lumbar"
    # On an anticoagulant a new deficit may be an epidural haematoma: stat (ASRA 2018), and the
    # injury behind it, if any, named.
    anticoagulant = ctx.evidence("anticoagulant_medication")
    injury = ctx.evidence(*INJURY_CONCEPTS) if anticoagulant else []
    picture = f"new weakness with {_pain(ctx)}"
    if anticoagulant:
        picture = f"new weakness on an anticoagulant{' after an injury' if injury else ''}: epidural haematoma?"
    verdict = _urgent_verdict(
        ctx,
        "motor_deficit",
        picture,
        new_deficit + anticoagulant + injury,
        "stat" if anticoagulant else "urgent",
        next_steps=[NextStep("surgical-referral", "refer to spinal surgery now (new motor deficit)", "ACP_APS_2007")],
        confirm=[] if lumbar else ["sudden onset without neck pain: exclude a stroke"],
        guideline_ids=["ACP_APS_2007", "ACP_2011", "CW_NASS"] if lumbar else ["ACR_MYELO_2020", "ACP_APS_2007"],
    )
    actions = ["examine strength, reflexes and sensation"]
    if anticoagulant:
        actions.append("check clotting and review the anticoagulant now")
    return Urgent(verdict, "new weakness", [*actions, "refer to spinal surgery now (new motor deficit)"])


def _ankylosed_spine_injury(ctx: Findings) -> Urgent | None:
    """An ankylosed spine (ankylosing spondylitis, DISH) after any injury: urgent MRI, even after a
    negative CT. ACR Suspected Spine Trauma: these fractures are unstable and CT misses them."""
    spine = ctx.evidence(*ANKYLOSED_SPINE_CONCEPTS)
    injury = ctx.evidence(*INJURY_CONCEPTS)
    if not spine or not injury:
        return None
    ct = ctx.prior_studies(("ct",), since=min((e.date for e in injury if e.date), default=None))
    why = _why(injury + spine, ctx.as_of)
    if ct:
        why.append(f"CT {ct[-1].date.isoformat()} does not exclude an unstable fracture")
    verdict = _urgent_verdict(
        ctx,
        "trauma",
        f"injury with an ankylosed spine ({lower_first(spine[0].label)})",
        injury + spine,
        "urgent",
        why=why,
        guideline_ids=["ACR_TRAUMA"],
        override_set="trauma",
    )
    return Urgent(
        verdict,
        "an injured ankylosed spine",
        ["spinal precautions until imaged"],
        timing="MRI urgently, even after a negative CT",
    )


def _after_neuraxial_procedure(ctx: Findings, new_deficit: list[Evidence]) -> Urgent | None:
    """New back pain or a new deficit within days of an epidural or spinal injection, or spine
    surgery: epidural haematoma or abscess until proven otherwise, more so on an anticoagulant
    (ASRA Horlocker 2018: imaging and surgical consultation at once; ACR Suspected Spine
    Infection)."""
    # After spine surgery pain is expected: only a new deficit is the haematoma's question there
    # (a second review); after an injection, new pain is.
    procedures = ctx.evidence("neuraxial_procedure") + [
        e
        for e in ctx.evidence("prior_spine_surgery")
        if new_deficit and e.date is not None and (ctx.as_of - e.date).days <= POST_PROCEDURE_DAYS
    ]
    if not procedures:
        return None
    procedure = max(procedures, key=lambda e: e.date or date.min)
    new_pain = [
        e
        for e in ctx.episode
        if e.origin == FROM_ORDER or (e.date is not None and procedure.date is not None and e.date >= procedure.date)
    ]
    if not new_pain and not new_deficit:
        return None
    anticoagulant = ctx.evidence("anticoagulant_medication")
    verdict = _urgent_verdict(
        ctx,
        "neuraxial_procedure",
        "new pain after a spinal procedure: epidural haematoma or abscess?",
        [procedure, *new_deficit, *anticoagulant],
        "stat" if new_deficit or anticoagulant else "urgent",
        next_steps=[SAME_DAY_REFERRAL],
        contrast="with-and-without",
        contrast_reason="epidural abscess or haematoma",
        guideline_ids=["ASRA_2018", "ACR_INFX_2021"],
    )
    actions = ["refer to spinal surgery today"] + (["review the anticoagulant"] if anticoagulant else [])
    return Urgent(verdict, "a recent spinal procedure", actions)


def _suspected_infection(ctx: Findings, infection: list[Evidence]) -> Urgent | None:
    if not infection:
        return None
    infection = infection + [e for e in ctx.evidence(*INFECTION_RISK_CONCEPTS) if e not in infection]
    diagnosed = ctx.evidence("spinal_infection")
    picture = (
        f"{lower_first(finding_name(diagnosed[0]))} in the record: epidural abscess?"
        if diagnosed
        else "suspected spinal infection"
    )
    verdict = _urgent_verdict(
        ctx,
        "infection",
        picture,
        infection,
        "urgent",
        next_steps=[BLOOD_CULTURES],
        contrast="with-and-without",
        contrast_reason="suspected infection",
        guideline_ids=["ACR_INFX_2021"] + (["ACP_APS_2007"] if ctx.rule_region == "lumbar" else []),
    )
    actions = ["blood cultures before antibiotics"]
    if ctx.rule_region == "cervical" and ctx.has("fever"):
        actions.insert(0, "assess for meningitis now (neck stiffness, rash, sepsis)")
    return Urgent(verdict, "suspected infection", actions)


def _cancer(ctx: Findings, cancer: list[Evidence]) -> Urgent | None:
    """Cancer (active or a history of) with new spine pain: MRI without and with contrast within a
    week (NICE NG234 for suspected spinal metastases without neurological symptoms; ACR LBP V7,
    CN-V5; ACP 2007). Skin basal and squamous cell carcinomas and carcinoma in situ are not in
    the cancer concepts (mappings)."""
    if not cancer:
        return None
    name = lower_first(cancer[0].label)  # the record's words are on the "why" line
    # (wording only: a metastasis the record names already is not asked about again)
    known = any("metasta" in e.display.lower() or "secondary malignant" in e.display.lower() for e in cancer)
    region = REGION_WORDS.get(ctx.region, "back")
    verdict = _urgent_verdict(
        ctx,
        "cancer",
        f"known metastases, new {region} pain: progression, fracture or cord compression?"
        if known
        else f"{name} with new {region} pain: spinal metastasis?",
        cancer,
        "urgent",
        contrast="with-and-without",
        contrast_reason="suspected tumour",
        guideline_ids=["NICE_NG234"] + (["ACP_APS_2007"] if ctx.rule_region == "lumbar" else []),
    )
    verdict.extrapolated = ctx.region == "thoracic"
    return Urgent(
        verdict,
        "a cancer history",
        ["at once, of the whole spine, if neurological symptoms appear"],
        timing="MRI within a week (NICE NG234)",
    )


def _cord_compression_in_cancer(ctx: Findings, cancer: list[Evidence], cord: list[Evidence]) -> Urgent:
    """Cancer with myelopathy, new bladder or saddle symptoms or a new deficit: suspected
    metastatic compression of the cord or cauda equina. NICE NG234: MRI of the whole spine within
    24 hours, and same-day referral to the spinal or acute oncology team."""
    verdict = _urgent_verdict(
        ctx,
        "cancer",
        f"{lower_first(cancer[0].label)} with new neurological symptoms: metastatic cord compression?",
        cord + cancer,
        "stat",
        next_steps=[
            NextStep("whole-spine", "MRI of the whole spine", "NICE_NG234"),
            NextStep("surgical-referral", "refer to the spinal or acute oncology team today", "NICE_NG234"),
        ],
        contrast="with-and-without",
        contrast_reason="suspected tumour",
        guideline_ids=["NICE_NG234"],
    )
    return Urgent(
        verdict,
        "metastatic cord compression",
        ["refer to the spinal or acute oncology team today"],
        timing="MRI of the whole spine within 24 hours (NICE NG234)",
    )


def _new_or_old(ctx: Findings) -> Verdict | None:
    """A finding that would be urgent if new, but that the record cannot place in this episode
    (undated, or recorded before it), or a possible motor deficit (a gait disturbance, an
    unspecific weakness code) whatever its date: the card warns and asks. New: the order is made
    urgent (stat for bladder or saddle symptoms); old and stable: the verdict without it. Never an
    info card: under doubt about a red flag, warn (HEDIS counts neurological impairment as an
    exclusion). An old retention code is often the prostate; an old cauda equina syndrome often
    its residue (a spine physician's review)."""
    sphincter = [e for e in ctx.evidence("cauda_equina") if not ctx.is_new(e)]
    deficit = [e for e in ctx.evidence(*FOCAL_DEFICIT_CONCEPTS) if not ctx.is_new(e)]
    myelopathy = [e for e in ctx.evidence("myelopathy") if not ctx.is_new(e)]
    possible = ctx.evidence(*POSSIBLE_DEFICIT_CONCEPTS)
    evidence = sphincter + deficit + myelopathy + possible
    if not evidence:
        return None
    pain = _pain(ctx)
    lumbar = ctx.rule_region == "lumbar"
    if sphincter:
        what = lower_first(finding_name(sphincter[0]))
        when = f"recorded {sphincter[0].date.year}" if sphincter[0].date else "undated"
        picture = f"{what} ({when}) with {pain}: new?"
        now = "Ask and examine now: new retention, incontinence or saddle numbness is an emergency " + (
            "(MRI now, spinal surgery today)." if lumbar else "(cord compression: MRI now)."
        )
        question = "are the bladder, bowel or saddle symptoms new?"
    elif myelopathy and not deficit:
        when = f"known since {myelopathy[0].date.year}" if myelopathy[0].date else "undated"
        picture = f"myelopathy ({when}) with {pain}: new or progressing signs?"
        now = "Examine for myelopathy (hands, gait, reflexes): new or progressing signs make the MRI urgent."
        question = "are the myelopathic signs new or progressing?"
    elif deficit:
        picture = f"weakness in the record with {pain}: new or old?"
        now = "Examine strength, reflexes and sensation: new or worsening weakness makes the MRI urgent."
        question = "is the weakness new or worsening?"
    elif lumbar:
        picture = f"{lower_first(finding_name(possible[0]))} with {pain}: motor deficit?"
        now = "Examine strength, reflexes and sensation now: a new motor deficit makes the MRI urgent."
        question = "is there a new motor deficit on examination?"
    else:
        # A gait change with neck or thoracic pain is the cord's question (ACR Myelopathy).
        picture = f"{lower_first(finding_name(possible[0]))} with {pain}: myelopathy?"
        now = "Examine for myelopathy now (hands, gait, reflexes, a sensory level): signs make the MRI urgent."
        question = "are there new myelopathic signs or weakness?"
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant(
            "cauda_equina" if sphincter else "myelopathy" if myelopathy and not deficit else "motor_deficit"
        ),
        picture=picture,
        why=[*_why(evidence, ctx.as_of), pain],
        now=now,
        confirm=[question],
        ask_if_new=True,
        priority_if_new="stat" if sphincter else "urgent",
        ask_what="bladder or saddle symptoms"
        if sphincter
        else "weakness"
        if deficit or (lumbar and not myelopathy)
        else "myelopathic signs",
        red_flags_found=evidence,
        guideline_ids=["ACP_APS_2007", "ACP_2011", "CW_NASS"] if lumbar else ["ACR_MYELO_2020"],
        override_set="deficit",
    )


def _follow_up(ctx: Findings) -> Verdict | None:
    """Imaging to follow a treated spinal infection or a known lesion, in a patient with nothing
    new since the last MRI: low-value (IDSA 2015 vertebral osteomyelitis: no routine follow-up MRI
    when improving; ACR Suspected Spine Infection). Follow-up is read from the order's reason (a
    follow-up encounter code) or from a spinal infection marked resolved; any finding recorded
    after that MRI (fever, raised markers, a new deficit, new pain) makes it a new question."""
    follow_up = ctx.evidence("follow_up_encounter")
    treated = [item for item, why in ctx.not_counted if item.concept_id == "spinal_infection" and "resolved" in why]
    if not follow_up and not treated:
        return None
    mris = ctx.prior_studies(("mri",), since=ctx.as_of - timedelta(days=PRIOR_IMAGING_DAYS))
    if not mris:
        return None
    latest = mris[-1]
    new = [
        e
        for c, items in ctx.flags.items()
        if c not in ("follow_up_encounter", "age_over_50", "age_fracture_risk")
        for e in items
        if e.origin != FROM_ORDER and e.date is not None and e.date > latest.date
    ]
    if new:
        return None
    known = (treated or follow_up)[0]
    return Verdict(
        code="low-value",
        variant_id="FOLLOW-UP",
        picture=f"follow-up MRI of {lower_first(known.label)}, nothing new since the MRI of {latest.date.isoformat()}",
        why=[
            f"{known.label} ({'treated' if treated else 'follow-up'})",
            f"{study_words(latest, ctx.as_of)} ({latest.date.isoformat()})",
            "no fever, raised marker, new deficit or new pain recorded since",
        ],
        now="No routine follow-up MRI while improving (IDSA 2015): follow symptoms, ESR and CRP.",
        confirm=["new or worse pain, fever, rising ESR or CRP, or a new deficit: MRI is indicated again"],
        guideline_ids=["IDSA_2015", "ACR_INFX_2021"],
        suggest_cancel=True,
        override_set="follow-up",
    )


def _vertebral_compression_fracture(ctx: Findings) -> Verdict | None:
    """A new fragility vertebral fracture: MRI is the next study (ACR Management of VCF 2018, V1).

    The fracture diagnosis says it was seen on radiographs or CT; ACR VCF Variant 1 (new
    symptomatic compression fracture identified on radiographs or CT, no known malignancy) rates
    MRI without contrast usually appropriate, to date the fracture, look for an underlying lesion
    and plan vertebral augmentation. It applies to fractures with osteoporosis, steroids or older
    age; a fracture from high-energy trauma in a younger patient stays with ACR Suspected Spine
    Trauma (CT first, _trauma). We follow ACR VCF here over ACP 2007's 'radiographs first',
    because the radiographs are what found the fracture.
    """
    fractures = ctx.evidence("vertebral_fracture")
    fragility = ctx.evidence(*FRACTURE_RISK_CONCEPTS, "age_fracture_risk")
    # Thoracolumbar and low-energy only: an atlas fracture or a fall from height is trauma (_trauma).
    if not fractures or not fragility or ctx.rule_region == "cervical" or ctx.has("dangerous_mechanism"):
        return None
    age = ctx.facts.age
    younger = age is None or age < CCR_AGE
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("vertebral_fracture"),
        picture="new osteoporotic vertebral fracture: MRI shows its age and any lesion beneath",
        why=_why(fractures + fragility, ctx.as_of),
        now="MRI without contrast: the fracture's age, an underlying lesion, augmentation planning.",
        confirm=(["a high-energy injury: CT first"] if younger else []) + ["a neurological deficit: MRI urgently"],
        guideline_ids=["ACR_VCF_2018"],
        red_flags_found=fractures + fragility,
        contrast="without",
        override_set="fracture",
    )


def _trauma_high_risk(ctx: Findings) -> list[Evidence]:
    """What makes imaging indicated after an injury without a known fracture: the Canadian C-spine
    rule (Stiell 2001), neck only: age >= 65, a dangerous mechanism, paresthesias in the
    extremities. (An ankylosed spine after an injury is urgent: _ankylosed_spine_injury.)
    Thoracolumbar injuries in older patients are ACR LBP V6 (_fracture_risk)."""
    risk = ctx.evidence("dangerous_mechanism")
    if ctx.rule_region == "cervical":
        risk += ctx.evidence("paresthesia")
        age = ctx.facts.age
        if age is not None and age >= CCR_AGE:
            risk.append(
                Evidence(
                    "age_trauma_risk",
                    f"age {age}",
                    "Patient",
                    "record",
                    f"age {age}: Canadian C-spine rule high-risk factor",
                    value=f"age {age} (65 or older: Canadian C-spine rule)",
                )
            )
    return risk


def _trauma(ctx: Findings) -> Verdict | None:
    """Recent spinal trauma without a deficit: CT first, not MRI (ACR Suspected Spine Trauma).

    A known fracture, or an injury with a high-risk factor, needs imaging, and CT is the first
    study. Once CT of the region is done after the injury, MRI answers only an open question: a
    neurological finding (urgent, above) or a suspected ligament injury the clinician names (the
    override). An injury without a high-risk factor is left to the other rules: sprain and strain
    codes alone are not red flags (reference note), and for the neck the Canadian C-spine rule says
    no imaging (_no_red_flags). Injury codes count at their initial and subsequent encounters
    (7th character A, B, D), not at sequela (S: history).
    """
    fracture = ctx.evidence("trauma")
    injury = ctx.evidence("recent_injury")
    if not fracture and not injury:
        return None
    risk = _trauma_high_risk(ctx)
    if not fracture and not risk:
        return None
    injury_dates = [e.date for e in fracture + injury if e.date is not None]
    since = min(injury_dates) if injury_dates else None
    what = "recent spinal fracture" if fracture else f"neck injury, {risk[0].value or lower_first(risk[0].label)}"
    ct_done = ctx.prior_studies(("ct",), since)
    if ct_done:
        study = ct_done[-1]
        return Verdict(
            code="low-value",
            variant_id=ctx.variant("trauma"),
            picture=f"{what}, CT done {format_ago(study.date, ctx.as_of)}, no neurological finding recorded",
            why=[*_why(fracture + injury + risk, ctx.as_of), f"CT {study.date.isoformat()}"],
            now="MRI after CT is for a neurological finding or a suspected ligament injury.",
            confirm=["a neurological deficit or suspected cord injury: MRI urgently", "suspected ligament injury"],
            guideline_ids=["ACR_TRAUMA"],
            red_flags_found=fracture + injury + risk,
            suggest_cancel=True,
            override_set="trauma",
        )
    return Verdict(
        code="radiographs-first",
        variant_id=ctx.variant("trauma"),
        picture=f"{what}, no deficit recorded",
        why=_why(fracture + injury + risk, ctx.as_of),
        now=f"CT of the {ctx.rule_region} spine without contrast first; MRI for a neurological deficit"
        + (", or for the ligaments or cord once CT shows the fracture." if fracture else "."),
        confirm=["a neurological deficit or suspected cord injury: MRI urgently"]
        + (["CT already done: MRI for the ligaments or cord is the next study"] if fracture else []),
        guideline_ids=["ACR_TRAUMA"] + (["CCR_2001"] if ctx.rule_region == "cervical" and not fracture else []),
        red_flags_found=fracture + injury + risk,
        first_study="ct",
        override_set="trauma",
    )


def _prior_surgery(ctx: Findings) -> Verdict | None:
    """Prior spine surgery with new symptoms: lumbar MRI indicated, without and with contrast (ACR
    LBP V5 rates both usually appropriate: contrast is offered for a recurrent disc or scar after a
    discectomy, not recommended); cervical:
    radiographs or CT first (ACR CN-V3 rates them usually appropriate, MRI may be appropriate).
    Read from Procedures (CPT 22xxx fusion, 630xx decompression, SNOMED CT procedures) and from
    diagnoses (M96.1 postlaminectomy syndrome; Z98.1 arthrodesis status is any joint, so the card
    asks instead: findings.FUSION_QUESTION)."""
    evidence = ctx.evidence("prior_spine_surgery")
    if not evidence:
        return None
    if ctx.rule_region == "cervical":
        verdict = Verdict(
            code="radiographs-first",
            variant_id=ctx.variant("prior_surgery"),
            picture=f"{_pain(ctx)} after cervical spine surgery",
            why=[*_why(evidence, ctx.as_of), _pain(ctx)],
            now="Radiographs (or CT) of the cervical spine first; MRI if they do not explain it.",
            confirm=["myelopathic signs or a new deficit: MRI urgently"],
            guideline_ids=["ACR_CNECK_2018"],
            red_flags_found=evidence,
            first_study="radiograph",
            override_set="first-study",
        )
        return _first_study_done(ctx, verdict, "after cervical spine surgery")
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("prior_surgery"),
        picture=f"{_pain(ctx)} after spine surgery",
        why=[*_why(evidence, ctx.as_of), _pain(ctx)],
        now="MRI: a recurrent disc, adjacent-segment disease, instability or infection?",
        confirm=(
            # in the first days after surgery pain is expected; these are the emergencies
            ["a new deficit, fever or wound discharge: MRI now, and tell the operating surgeon"]
            if any(e.date and (ctx.as_of - e.date).days <= POST_PROCEDURE_DAYS for e in evidence)
            else []
        )
        + ["symptoms unchanged since before surgery: imaging may not change management"],
        guideline_ids=["ACR_LBP_2021", "OP8", "HEDIS_LBP_MY2025"],
        red_flags_found=evidence,
        # ACR LBP V5 rates MRI without and MRI without and with contrast both usually appropriate.
        contrast="with-and-without",
        contrast_reason="if a recurrent disc or an infection is suspected",
        contrast_optional=True,
        override_set="contrast",
    )


def _infection_risk(ctx: Findings) -> Verdict | None:
    """Injection drug use (also coded as opioid use disorder) or immunosuppression with back or
    neck pain, no fever or raised marker recorded: MRI usually appropriate, without and with
    contrast (ACR LBP V7, ACR Suspected Spine Infection 2021)."""
    evidence = ctx.evidence(*INFECTION_RISK_CONCEPTS)
    if not evidence or not ctx.episode:
        return None
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("infection"),
        picture=f"{_pain(ctx)} with {lower_first(evidence[0].label)}: spinal infection?",
        why=[*_why(evidence, ctx.as_of), _pain(ctx)],
        now="MRI; check temperature, ESR and CRP today.",
        confirm=["fever or raised ESR or CRP: MRI urgently"],
        guideline_ids=["ACR_INFX_2021"],
        red_flags_found=evidence,
        contrast="with-and-without",
        contrast_reason="infection risk",
        override_set="contrast",
    )


def _demyelinating(ctx: Findings) -> Verdict | None:
    """Multiple sclerosis or NMOSD with a new cord symptom (the last 12 weeks: paresthesia such as
    Lhermitte's sign or numb hands, weakness, a gait change): MRI indicated, without and with
    contrast (ACR Myelopathy 2020). Read from the problem list when the order names no reason."""
    disease = ctx.evidence("demyelinating_disease")
    if not disease:
        return None
    symptoms = [e for e in ctx.evidence(*CORD_SYMPTOM_CONCEPTS) if ctx.is_new(e)]
    if not symptoms:
        return None
    return Verdict(
        code="indicated-routine",
        variant_id="DEMYEL-V1",
        picture=f"{lower_first(finding_name(disease[0]))} with a new cord symptom: relapse?",
        why=_why(symptoms + disease, ctx.as_of),
        now="MRI: active demyelination? Tell the neurologist.",
        confirm=["weakness progressing over days: MRI urgently"],
        guideline_ids=["ACR_DEMYELINATING", "ACR_MYELO_2020"],
        red_flags_found=symptoms + disease,
        contrast="with-and-without",
        contrast_reason="demyelinating disease",
        override_set="contrast",
    )


def _child(ctx: Findings) -> Verdict | None:
    """Back pain under 18 (ACR Appropriateness Criteria Back Pain-Child). No red flag: imaging
    usually not appropriate (V1); radiographs first when spondylolysis is suspected (an athlete with
    pain on extension), MRI only after them. With a child's red flag (V2: radiographs of the area
    usually appropriate, MRI may be appropriate): radiographs first, and MRI when they are negative
    and the suspicion remains. The red flags read from the record are those of the pediatric
    red-flag table the narrative's literature gives (AJNR, Symptoms and signs that may indicate
    serious pathology in children with back pain): weight loss, long-term steroids, raised
    markers, pain for more than 4 weeks, age under 5; the others (night or constant pain, an
    abnormal examination) are asked."""
    if not ctx.child or ctx.rule_region == "cervical" or not ctx.episode:
        return None
    age = ctx.facts.age or 0
    recorded = ctx.evidence(*CHILD_RED_FLAGS)
    flags = _why(recorded, ctx.as_of)
    names = [
        "long-term steroids" if e.concept_id == "long_term_steroids" else lower_first(finding_name(e)) for e in recorded
    ]
    if ctx.episode_weeks is not None and ctx.episode_weeks > CHILD_PAIN_WEEKS:
        flags.append(f"pain for {format_weeks(ctx.episode_weeks)} (over {CHILD_PAIN_WEEKS} weeks)")
        names.append(f"pain over {CHILD_PAIN_WEEKS} weeks")
    if age < CHILD_YOUNG_AGE:
        flags.append(f"age {age} (under {CHILD_YOUNG_AGE})")
        names.append(f"under {CHILD_YOUNG_AGE}")
    if flags:
        verdict = Verdict(
            code="radiographs-first",
            variant_id="CHILD-V2",
            picture=f"{_pain(ctx)} at age {age}, red flag: {names[0]}",
            why=[_pain(ctx), f"age {age}", *flags],
            now="Radiographs of the painful area first, with a blood count and ESR or CRP; "
            "MRI if they are negative and the suspicion remains.",
            confirm=["a neurological deficit, bladder or bowel symptoms or fever: MRI urgently"],
            guideline_ids=["ACR_BACKPAIN_CHILD"],
            red_flags_found=ctx.evidence(*CHILD_RED_FLAGS),
            first_study="radiograph",
            override_set="first-study",
        )
        return _first_study_done(ctx, verdict, "radiographs done")
    spondylolysis = ctx.evidence("spondylolysis")
    verdict = Verdict(
        code="radiographs-first" if spondylolysis else "low-value",
        variant_id="CHILD-SPONDYLOLYSIS" if spondylolysis else "CHILD-V1",
        picture=f"{_pain(ctx)} at age {age}" + (": spondylolysis?" if spondylolysis else ", no red flag recorded"),
        why=[_pain(ctx), f"age {age}", *_why(spondylolysis, ctx.as_of)],
        now=(
            "Radiographs of the painful area first; MRI if they are negative and suspicion remains."
            if spondylolysis
            else "No imaging: most back pain at this age settles. "
            "An athlete with pain on extension: radiographs (spondylolysis?)."
        ),
        confirm=[
            "not in the record, ask or examine: constant or night pain; radicular pain; "
            "an abnormal neurological examination; fever"
        ],
        guideline_ids=["ACR_BACKPAIN_CHILD"],
        red_flags_found=spondylolysis,
        first_study="radiograph" if spondylolysis else None,
        suggest_cancel=not spondylolysis,
        override_set="first-study" if spondylolysis else "low-value",
    )
    return _first_study_done(ctx, verdict, "radiographs done") if spondylolysis else verdict


def _therapy_failed(ctx: Findings) -> Verdict | None:
    """ACR LBP V3: radiculopathy or stenosis persisting after >= 6 weeks of conservative therapy.

    ACR V3 says "+/- radiculopathy" for surgery or intervention candidates; we require
    radiculopathy or stenosis because axial pain alone rarely makes a surgical candidate
    (ACP 2007, NICE NG59 1.1.6). The override reason "surgical or interventional candidate"
    covers the exception.
    """
    if ctx.rule_region == "cervical" or not ctx.radicular:
        return None
    kind = "sciatica" if ctx.has("radiculopathy") else "spinal stenosis"
    if ctx.therapy.undated:
        return Verdict(
            code="insufficient-information",
            variant_id=None,
            guideline_ids=["ACR_LBP_2021"],
            picture=f"{kind}, therapy dates missing",
            why=[_pain(ctx), "conservative therapy recorded without dates"],
            now="Date the therapy: 6 weeks or more makes MRI indicated; less, MRI is low-value.",
            not_documented=["dates of the conservative therapy (Procedure.performed, MedicationRequest.authoredOn)"],
            override_set="low-value",
        )
    weeks = ctx.therapy.weeks
    if weeks is None or weeks < THERAPY_TRIAL_WEEKS:
        return None
    return Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("therapy_failed"),
        picture=f"{kind} persisting after {format_weeks(weeks)} of conservative therapy",
        why=[_pain(ctx), f"conservative therapy for {format_weeks(weeks)}"],
        now="MRI, if surgery or an epidural injection is considered.",
        confirm=["improving, or not a candidate for surgery or injection: MRI will not change management"],
        guideline_ids=["ACR_LBP_2021", "ACP_APS_2007", "NOR_2010"],
        contrast="without",
        override_set="contrast",
    )


def _cervical_radiculopathy(ctx: Findings) -> Verdict | None:
    """ACR Cervical Neck Pain CN-V2: radiculopathy persisting >= 6 weeks -> MRI without contrast.
    Cervical canal stenosis is not radiculopathy: its question is myelopathy (ACR Myelopathy).

    The 2018 criteria rate MRI usually appropriate for any new radiculopathy; the 2024 update
    rates it only 'may be appropriate' when acute. We follow 2024: defer under 6 weeks.
    """
    if ctx.rule_region != "cervical" or not ctx.radicular:
        return None
    weeks = ctx.episode_weeks
    if weeks is None:
        return Verdict(
            code="insufficient-information",
            variant_id=None,
            picture=f"{_pain(ctx).split(' (')[0]} of unknown duration",
            why=[f"{_pain(ctx).split(' (')[0]} without an onset date"],
            guideline_ids=["ACR_CNECK_2024"],
            now="Record its onset: 6 weeks or more makes MRI indicated; less, without a deficit, defer it.",
            not_documented=["onset date of the radiculopathy (Condition.onsetDateTime)"],
            override_set="low-value",
        )
    stenosis = not ctx.has("radiculopathy")
    if weeks >= ACUTE_WEEKS:
        return Verdict(
            code="indicated-routine",
            variant_id="CN-V2",
            picture=f"{_pain(ctx)}" + (": myelopathy?" if stenosis else ""),
            why=[_pain(ctx)],
            now=(
                "Examine for myelopathy (hand clumsiness, gait, reflexes): signs make it urgent; MRI."
                if stenosis
                else "MRI, if an injection or surgery is considered; examine for weakness or myelopathic signs."
            ),
            confirm=["symptoms resolving: MRI will not change management"],
            guideline_ids=["ACR_CNECK_2024", "NOR_2010"],
            contrast="without",
            override_set="contrast",
        )
    return Verdict(
        code="low-value",
        variant_id="CN-V2",
        picture=f"{_pain(ctx)}, no deficit recorded: most settle within 6 weeks",
        why=[_pain(ctx), "no motor deficit or myelopathic sign recorded"],
        now="Conservative care; MRI if it persists past 6 weeks or a deficit appears.",
        confirm=_ask(ctx),
        guideline_ids=["ACR_CNECK_2024", "NOR_2010"],
        suggest_cancel=True,
        override_set="low-value",
    )


def _first_study_done(ctx: Findings, verdict: Verdict, subject: str, since: date | None = None) -> Verdict:
    """A first-study verdict whose question is still open once that study is done: MRI next.

    ACP 2007: MRI if radiographs are negative but suspicion remains; ACR LBP V6 and CN-V8 rate
    MRI without contrast usually appropriate once plain films have been done. Only the rules
    whose question a radiograph leaves open call this (fracture age, raised markers, weight loss,
    prior surgery, spondylolysis): a first study of chronic axial pain that showed degeneration
    does not make MRI the next step.
    """
    done = ctx.prior_studies(("radiograph", "ct"), since)
    if not done:
        if ctx.imaging_unread:
            verdict.confirm.append("prior imaging could not be read: radiographs or CT already done?")
        return verdict
    study = done[-1]
    words = study_words(study, ctx.as_of)
    verdict.code = "indicated-routine"
    verdict.first_study = None
    verdict.suggest_cancel = False
    verdict.picture = f"{verdict.picture.split(':')[0]}, {words}: MRI next"
    verdict.why.append(f"{words} ({study.date.isoformat()})")
    verdict.now = "MRI, if the earlier study did not explain the symptoms."
    verdict.confirm = ["the earlier study already explains the symptoms: MRI adds little"]
    verdict.override_set = "contrast"
    return verdict


def _fracture_risk(ctx: Findings) -> Verdict | None:
    """Osteoporosis, long-term steroids, older age or low-velocity trauma in the elderly, no
    deficit: ACR LBP V6 rates radiographs, CT and MRI without contrast all usually appropriate, so
    the MRI is appropriate and radiographs stay the cheaper first study (ACP 2007 suggests them).

    ACR LBP V6 names 'low-velocity trauma, osteoporosis, elderly individual, chronic steroid use':
    a recent thoracic or lumbar injury counts when the patient is >= 65 (the age the Canadian
    C-spine rule uses; V6 gives no number). In younger patients a sprain or strain code alone is
    how acute back pain is often coded, not a red flag (reference note). Age alone is not the
    frame for radiculopathy (B10): sciatica at 70 is rated as sciatica. Thoracolumbar only: a
    fragility fracture is a thoracolumbar question, and neck pain in an older patient without an
    injury is rated as neck pain (an injury: the Canadian C-spine rule, _trauma).
    """
    if ctx.rule_region == "cervical":
        return None
    evidence = ctx.evidence(*FRACTURE_RISK_CONCEPTS)
    age = ctx.facts.age
    if age is not None and age >= CCR_AGE and ctx.has("recent_injury"):
        evidence = ctx.evidence("recent_injury") + evidence
    if not evidence and not ctx.radicular:
        evidence += ctx.evidence("age_fracture_risk")
    if not evidence:
        return None
    region = ctx.rule_region
    first = evidence[0]
    risk = (
        "long-term steroids"
        if first.concept_id == "long_term_steroids"
        else f"age {age}"
        if first.concept_id == "age_fracture_risk"
        else f"{_injury_words(first)} {format_ago(first.date, ctx.as_of)} at {age}"
        if first.concept_id == "recent_injury" and first.date
        else lower_first(finding_name(first))
    )
    also = (
        "ACR rates MRI without contrast usually appropriate too"
        if region == "lumbar"
        else "MRI is also reasonable (by analogy with ACR LBP Variant 6)"
    )
    verdict = Verdict(
        code="indicated-routine",
        variant_id=ctx.variant("fracture_risk"),
        picture=f"fracture? {risk}, {_pain(ctx)}",
        why=[*_why(evidence, ctx.as_of), _pain(ctx)],
        now=f"Radiographs of the {region} spine are the usual first study (ACP 2007); {also}.",
        confirm=["a neurological deficit: MRI urgently"],
        guideline_ids=["ACR_LBP_2021", "ACP_APS_2007"] if region == "lumbar" else ["ACR_LBP_2021"],
        red_flags_found=evidence,
        first_study="radiograph",
        first_study_required=False,
        contrast="without",
        override_set="fracture",
    )
    done = ctx.prior_studies(("radiograph", "ct"))
    if done:
        return _first_study_done(ctx, verdict, "fracture risk")
    return verdict


def _injury_words(item: Evidence) -> str:
    """ "fall", or "an injury" when the record's words are long ("sprain of ligaments of ...")."""
    name = lower_first(finding_name(item))
    return name if len(name) <= 20 else "an injury"


def _weaker_risk(ctx: Findings) -> Verdict | None:
    """ACP 2007: weight loss, age > 50 (after ~1 month), axial spondyloarthritis or raised ESR/CRP
    -> radiographs (+ ESR) first; MRI once radiographs are done and the question is still open.

    Raised markers without an infection risk factor are a weaker suspicion of cancer or
    infection: ACP 2007 pairs radiographs with ESR, and a raised ESR after negative radiographs
    is what keeps the suspicion (the 'image if plain film positive or ESR raised' strategy of
    Joines 2001, cited by ACP 2007). Age over 50 is never the frame over a more specific one
    (radiculopathy, prior surgery, trauma, raised markers: B10), and a negative radiograph
    answers it: age alone does not make MRI the next study.
    """
    specific = ctx.evidence("weight_loss", "axial_spa", "inflammatory_markers")
    age = (
        ctx.evidence("age_over_50")
        if not specific and not ctx.radicular and ctx.episode_weeks is not None and ctx.episode_weeks >= ACP_TRIAL_WEEKS
        else []
    )
    if not specific and not age:
        return None
    if age and ctx.prior_studies(("radiograph", "ct")):
        return None  # the radiographs answered the weaker cancer risk: the pain rules apply
    what = (specific[0].value or lower_first(specific[0].label)) if specific else f"at age {ctx.facts.age}"
    markers_known = ctx.has("inflammatory_markers")
    markers_only = markers_known and not ctx.has("weight_loss", "axial_spa")
    verdict = Verdict(
        code="radiographs-first",
        # Raised markers alone: ACP 2007's radiographs-and-ESR strategy (Joines 2001), not the
        # weaker-cancer-risk scenario the other weak risks share.
        variant_id="LBP-ACP-MARKERS" if markers_only else ctx.variant("weaker_risk"),
        picture=f"{_pain(ctx)}, {what}" if specific else f"{_pain(ctx)} {what}",
        why=[_pain(ctx), *_why(specific + age, ctx.as_of)],
        now=(
            "Radiographs first (ESR or CRP already raised); MRI if they are abnormal or suspicion remains."
            if markers_known
            else "Radiographs and ESR/CRP first; MRI if they are abnormal or suspicion remains."
        ),
        confirm=["fever, a cancer history or a progressive motor deficit: MRI urgently"],
        # ACR rates these under Variant 7 (suspected cancer) or not at all: PAMA "no criteria apply".
        no_acr_criteria=bool(specific),
        guideline_ids=["ACP_APS_2007", "ACP_2011", "CW_NASS"] if ctx.rule_region == "lumbar" else [],
        red_flags_found=specific + age,
        first_study="radiograph",
        override_set="first-study",
    )
    return _first_study_done(ctx, verdict, what)


def _no_indication(ctx: Findings) -> Verdict | None:
    if ctx.episode:
        return None
    words = REGION_WORDS.get(ctx.region, "spine")
    # Pain or radiculopathy of another region (e.g. a lumbar reason on a cervical order) is read,
    # not missing: say so, since the order's region may be the mistake.
    elsewhere = [e for e, why in ctx.not_counted if e.concept_id in EPISODE_CONCEPTS and "finding; this order" in why]
    if elsewhere:
        other = elsewhere[0]
        where = "the order's reason" if other.origin == FROM_ORDER else "the record"
        return Verdict(
            code="insufficient-information",
            variant_id=None,
            picture=f"{where} names {lower_first(other.label)} of the {other.region} spine, not {words} pain",
            why=[f"{where} names {lower_first(other.label)} ({other.region})", f"nothing names {words} pain"],
            now=f"If the study meant is of the {other.region} spine, change the order; otherwise add the "
            f"{words} indication to the order's reason.",
            not_documented=[f"an indication for MRI of the {ctx.region} spine"],
            override_set="low-value",
        )
    return Verdict(
        code="insufficient-information",
        variant_id=None,
        picture=f"no {words} pain, radiculopathy or red flag in the order or the record",
        why=[f"neither the order's reason nor the record names {words} pain or a red flag"],
        now="Add the indication to the order's reason (or the problem list).",
        not_documented=["the indication for the MRI (order reasonCode or an active Condition)"],
        override_set="low-value",
    )


def _conservative_care(ctx: Findings, chronic: bool) -> str:
    """What to do instead, by region, duration, therapy already tried, and pregnancy (no NSAID or
    muscle relaxant advice in pregnancy). ACP 2017 recommendations 1-2 (low back pain)."""
    if ctx.rule_region == "lumbar":
        if chronic:
            care = "exercise or physical therapy, spinal manipulation or acupuncture"
            mri = (
                "MRI then if sciatica persists and an injection or surgery is considered"
                if ctx.radicular
                else "MRI only if sciatica develops and persists after it, in a surgical candidate"
            )
            tried = ctx.therapy.weeks
            if tried is not None and tried >= 1:
                left = max(1, round(THERAPY_TRIAL_WEEKS - tried))
                return f"Continue therapy to 6 weeks ({left} more): {care}; {mri}."
            return f"Start 6 weeks of therapy: {care}; {mri}."
        drugs = "" if ctx.pregnant else "; an NSAID or muscle relaxant if needed"
        return f"Conservative care: stay active, heat, massage or manipulation{drugs}; reassess at 4-6 weeks."
    if ctx.rule_region == "cervical":
        drugs = "" if ctx.pregnant else ", an NSAID if needed"
        return f"Conservative care: stay active, exercise{drugs}; radiographs if imaging is needed."
    drugs = "" if ctx.pregnant else ", an NSAID if needed"
    return f"Conservative care: stay active{drugs}; reassess at 4-6 weeks."


def _no_red_flags(ctx: Findings) -> Verdict:
    """No red flags: low-value within 6 weeks (V1) and after 6 weeks without a trial of therapy
    (V2); chronic neck pain: radiographs first (CN-V7), and after radiographs without
    radiculopathy or myelopathy MRI stays low-value (CN-V8 asks for neurological signs)."""
    weeks = ctx.episode_weeks
    pain = _pain(ctx)
    # Any red flag in the record, counted or not (another region, outside its window, not
    # verified): the card never says "no red flag" then.
    flags = [item for item, _ in ctx.not_counted if item.concept_id in ANY_RED_FLAG]
    flags += [d.evidence for d in ctx.doubts]
    nothing = "" if flags else ", no red flag recorded"
    if ctx.rule_region == "cervical" and weeks is not None and weeks >= ACUTE_WEEKS:
        xray = ctx.prior_studies(("radiograph",))
        arm = ctx.evidence("paresthesia", "numbness")
        if xray and arm:
            # ACR CN V8 rates MRI usually appropriate with neurologic signs or symptoms.
            study = xray[-1]
            return Verdict(
                code="indicated-routine",
                variant_id="CN-V8",
                picture=f"chronic neck pain with {lower_first(finding_name(arm[0]))}, radiographs done: radicular?",
                why=[pain, *_why(arm, ctx.as_of), f"{study_words(study, ctx.as_of)} ({study.date.isoformat()})"],
                now="Examine for a radicular or myelopathic pattern; MRI without contrast.",
                confirm=["symptoms resolving: MRI will not change management"],
                guideline_ids=["ACR_CNECK_2018"],
                red_flags_found=arm,
                contrast="without",
                override_set="contrast",
            )
        if xray:
            study = xray[-1]
            return Verdict(
                code="low-value",
                variant_id="CN-V8-NO-SIGNS",
                picture="chronic neck pain, radiographs done, no radiculopathy"
                + (" or red flag recorded" if not flags else " recorded"),
                why=[pain, f"{study_words(study, ctx.as_of)} ({study.date.isoformat()})", "no radiculopathy recorded"],
                now="MRI after radiographs is for radiculopathy or myelopathic signs; continue exercise therapy.",
                confirm=_ask(ctx),
                guideline_ids=["ACR_CNECK_2018"],
                suggest_cancel=True,
                override_set="low-value",
            )
        return Verdict(
            code="radiographs-first",
            variant_id="CN-V7",
            picture=f"chronic neck pain for {format_weeks(weeks)}{nothing}",
            why=[pain],
            now="Radiographs of the cervical spine first; MRI after them for radicular or myelopathic signs.",
            confirm=_ask(ctx),
            guideline_ids=["ACR_CNECK_2018", "NOR_2010"],
            first_study="radiograph",
            override_set="first-study",
        )
    if ctx.rule_region == "cervical" and ctx.has("recent_injury"):
        # ACR Suspected Spine Trauma V1: low risk by the Canadian C-spine rule -> no imaging.
        return Verdict(
            code="low-value",
            variant_id="TRAUMA-C-LOW",
            picture=f"{pain} after a low-risk neck injury: imaging not indicated",
            why=[
                pain,
                *_why(ctx.evidence("recent_injury"), ctx.as_of),
                "no Canadian C-spine rule high-risk factor recorded",
            ],
            now="No imaging: low risk by the Canadian C-spine rule.",
            confirm=[
                ("" if ctx.facts.age is not None else "age 65 or older, ")
                + "a dangerous mechanism, paresthesias, or unable to turn the neck 45 degrees: CT first"
            ],
            guideline_ids=["ACR_TRAUMA", "CCR_2001"],
            suggest_cancel=True,
            override_set="trauma",
        )
    chronic = weeks is not None and weeks >= ACUTE_WEEKS
    if chronic and ctx.therapy.weeks is not None and ctx.therapy.weeks >= THERAPY_TRIAL_WEEKS:
        now = "MRI does not change the care of axial pain without red flags; continue exercise or rehabilitation."
        variant = ctx.variant("no_therapy")
    elif chronic:
        now = _conservative_care(ctx, chronic=True)
        variant = ctx.variant("no_therapy")
    else:
        now = _conservative_care(ctx, chronic=False)
        variant = ctx.variant("acute")
    lumbar = ctx.rule_region == "lumbar"
    guidelines = (
        ["ACR_LBP_2021", "ACP_2017", "CW_AAFP", "CW_NASS", "CW_ACR", "NICE_NG59"]
        if lumbar
        else ["ACR_CNECK_2018", "NOR_2010"]
        if ctx.rule_region == "cervical"
        else ["ACR_LBP_2021"]
    )
    therapy = (
        f"therapy for {format_weeks(ctx.therapy.weeks)}" if ctx.therapy.weeks is not None else "no therapy recorded"
    )
    return Verdict(
        code="low-value",
        variant_id=variant,
        picture=f"{pain}{nothing}",
        why=[
            pain,
            therapy if chronic else "",
            "pregnant" if ctx.pregnant else "",
            "no red flag recorded" if not flags else "",
        ],
        now=now,
        confirm=_ask(ctx),
        guideline_ids=guidelines,
        suggest_cancel=True,
        override_set="low-value",
    )


def _repeat_mri(ctx: Findings, verdict: Verdict) -> Verdict:
    """An MRI of this region in the last 12 months: a repeat needs something new since.

    The ACR Appropriateness Criteria rate initial imaging (every LBP variant says 'Initial
    imaging'; V5 asks for new or progressing symptoms); ACP 2011 reserves imaging for severe or
    progressive deficits and suspected serious disease. So an urgent red flag keeps its verdict
    (the card names the earlier MRI); otherwise, when a symptom or finding was recorded after
    that MRI, the order is rated as a new problem, and when nothing was, the repeat MRI is
    low-value. The code cannot know whether symptoms changed: the card says so and the override
    covers it.
    """
    mris = ctx.prior_studies(("mri",), since=ctx.as_of - timedelta(days=PRIOR_IMAGING_DAYS))
    if not mris or verdict.variant_id == "FOLLOW-UP":
        return verdict
    latest = mris[-1]
    words = study_words(latest, ctx.as_of)
    if verdict.code in ("indicated-urgent", "insufficient-information"):
        verdict.why.append(f"{words} ({latest.date.isoformat()})")
        return verdict
    since_mri = [
        (e, e.date)
        for e in verdict.red_flags_found + ctx.episode
        if e.origin != FROM_ORDER and e.date is not None and e.date > latest.date
    ]
    if since_mri:
        # Something recorded after the MRI: a new problem, rated as if first seen.
        new, when = since_mri[0]
        verdict.why.append(f"{new.label} new since the {words} ({when.isoformat()})")
        return verdict
    return Verdict(
        code="low-value",
        variant_id="REPEAT-MRI",
        picture=f"{words}, nothing new recorded since",
        why=[f"{words} ({latest.date.isoformat()})", "no finding recorded after it"],
        now=f"Review the MRI of {latest.date.isoformat()} before repeating it.",
        confirm=["new or progressing symptoms, or a new red flag, since that MRI"],
        guideline_ids=["ACP_2011", "ACR_LBP_2021"] if ctx.rule_region == "lumbar" else ["ACR_CNECK_2018"],
        red_flags_found=verdict.red_flags_found,
        suggest_cancel=True,
        override_set="repeat",
    )


def _missing_data(ctx: Findings) -> Verdict:
    """Without every red-flag source, only a red flag found can rate the order."""
    return Verdict(
        code="insufficient-information",
        variant_id=None,
        picture="patient data not available: " + ", ".join(m.split(" (")[0] for m in ctx.missing),
        why=["no urgent red flag in what could be read; the rest could not be read"],
        now="Send the missing data in the prefetch (or allow the service to read the FHIR server).",
        missing=ctx.missing,
        override_set="low-value",
    )


# ----------------------------------------------------------------------------- what every verdict reports


def _contrast(verdict: Verdict, ctx: Findings) -> None:
    """The contrast advice reads the same findings as the verdict (B13): without and with after
    spine surgery, with raised markers, suspected infection or tumour and demyelinating disease;
    in pregnancy without (ACR Manual on Contrast Media: gadolinium only when essential)."""
    if ctx.pregnant and verdict.code.startswith("indicated-"):
        verdict.contrast = "without"
        verdict.contrast_reason = "pregnant: gadolinium only if essential"
    elif ctx.has("inflammatory_markers") and verdict.code.startswith("indicated-") and verdict.contrast != "without":
        verdict.contrast, verdict.contrast_reason = "with-and-without", verdict.contrast_reason or "raised markers"
    verdict.pregnant = ctx.pregnant


def pama_rating(
    verdict_code: str, variant_id: str | None, study: str, extrapolated: bool, acr_ratings: dict[str, dict[str, str]]
) -> tuple[str | None, str | None]:
    """(PAMA rating, ACR's rating) of `study` ("mri-without", "ct-without", ...) in the verdict's
    variant (B9): ACR's "Usually Appropriate" and "May Be Appropriate" adhere under the Argonaut
    PAMA IG, "Usually Not Appropriate" does not; without an ACR rating, the verdict decides. A
    thoracic verdict that rests on lumbar criteria by analogy: no criteria apply. Not rated:
    insufficient information, and radiographs (PAMA covers advanced imaging only)."""
    if verdict_code == "insufficient-information" or study == "radiograph":
        return None, None
    ratings = acr_ratings.get(variant_id or "", {})
    acr = ratings.get(study)
    if extrapolated:
        return "no-criteria-apply", acr
    if acr is not None:
        return ("appropriate" if acr in ADHERENT_RATINGS else "not-appropriate"), acr
    if ratings and study == "mri-with":
        # A contrast-only MRI the variant's table does not rate appropriate does not adhere to it
        # (ACR lists contrast-only spine MRI, where it rates it, as usually not appropriate).
        return "not-appropriate", None
    return RATING.get(verdict_code), None


def _rating(verdict: Verdict, ctx: Findings) -> None:
    contrast = ctx.order.contrast if ctx.order.contrast != "unspecified" else "without"
    verdict.pama_rating, verdict.acr_rating = pama_rating(
        verdict.code,
        verdict.variant_id,
        f"mri-{contrast}",
        verdict.extrapolated or verdict.no_acr_criteria,
        ctx.facts.acr_ratings,
    )


def _doubt(verdict: Verdict, ctx: Findings) -> None:
    """A verdict short of indicated with a possible red flag the record cannot settle: the card
    names it first and asks, and never recommends cancelling (under doubt, warn)."""
    if not ctx.doubts or verdict.code == "indicated-urgent" or verdict.ask_if_new:
        return
    first = ctx.doubts[0]
    verdict.doubts = [d.question for d in ctx.doubts]
    verdict.picture = f"{first.headline} with {_pain(ctx)}"
    verdict.why = [*(_why([d.evidence for d in ctx.doubts], ctx.as_of)), *verdict.why]
    verdict.why = [line for line in verdict.why if line != "no red flag recorded"]
    otherwise = f"if not: {lower_first(verdict.now or '')}"
    verdict.now = sentence([*verdict.doubts] + ([otherwise] if len(otherwise) < 120 else []))
    verdict.if_confirmed = next((d.if_confirmed for d in ctx.doubts if d.if_confirmed), None)
    verdict.suggest_cancel = verdict.code in ("low-value", "radiographs-first")


def _finish(verdict: Verdict, ctx: Findings) -> Verdict:
    """Fill what every verdict reports: flags checked, episode, therapy, prior imaging, contrast, rating."""
    checked = CHECKED_RED_FLAGS[ctx.rule_region]
    found_ids = {e.concept_id for e in verdict.red_flags_found}
    for concept_id in (*checked, *REPORTED_RISKS):
        if concept_id in ctx.flags and concept_id not in found_ids:
            verdict.red_flags_found.extend(ctx.flags[concept_id])
            found_ids.add(concept_id)
    verdict.not_counted = list(ctx.not_counted)
    present_ids = found_ids | {item.concept_id for item, _ in ctx.not_counted}
    labels = ctx.facts.concept_labels
    if not ctx.missing:
        verdict.red_flags_absent = [labels.get(c, c) for c in checked if c not in present_ids]
    verdict.prior_imaging = [
        f"{study_words(study, ctx.as_of)}: {study.description} ({study.reference}, {study.date.isoformat()})"
        for study in ctx.prior_studies(
            ("radiograph", "ct", "mri"), since=ctx.as_of - timedelta(days=PRIOR_IMAGING_DAYS)
        )
    ]
    _doubt(verdict, ctx)
    verdict.why = [line for line in dict.fromkeys(verdict.why) if line]
    if verdict.code != "indicated-urgent":  # an old entry behind the verdict: ask whether it still is so
        verdict.confirm = list(dict.fromkeys([*ctx.to_confirm, *verdict.confirm]))
    verdict.episode_weeks = ctx.episode_weeks
    verdict.episode_evidence = ctx.episode
    verdict.therapy_weeks = ctx.therapy.weeks
    verdict.therapy_evidence = ctx.therapy.descriptions
    if not verdict.missing:
        verdict.missing = ctx.missing
    verdict.skipped = list(ctx.facts.skipped)
    if ctx.region == "thoracic" and (verdict.variant_id or "") in EXTRAPOLATED_THORACIC:
        verdict.extrapolated = True
    if verdict.priority is not None and _priority_met(ctx.order.priority, verdict.priority):
        verdict.priority = None  # the draft already says it: nothing to escalate
    _contrast(verdict, ctx)
    _rating(verdict, ctx)
    if verdict.doubts:
        # Not rated until the clinician answers the card's question (a confirmed fever is another
        # verdict): any earlier rating is removed, as for insufficient information.
        verdict.pama_rating = verdict.acr_rating = None
    if verdict.code in ("low-value", "radiographs-first") and not verdict.first_study:
        verdict.suggest_cancel = True
    return verdict


def _priority_met(ordered: str, wanted: str) -> bool:
    rank = {name: index for index, name in enumerate(PRIORITY_ORDER)}
    return rank.get(ordered, 0) >= rank[wanted]


# ----------------------------------------------------------------------------- what the rules need

# Concept ids and guideline variants these rules read by name. A mappings folder without them
# would let the service start and silently never find that flag: `knowledge_gaps` stops it.
READ_CONCEPTS = tuple(
    dict.fromkeys(
        EPISODE_CONCEPTS
        + tuple(c for region in CHECKED_RED_FLAGS.values() for c in region)
        + ANKYLOSED_SPINE_CONCEPTS
        + CORD_SYMPTOM_CONCEPTS
        + (
            "systemic_corticosteroid",
            "immunosuppressant_medication",
            "analgesic_medication",
            "anticoagulant_medication",
            "follow_up_encounter",
            "spondylolysis",
            "diabetes",
            "stimulant_use",
            "arthrodesis_status",
            "numbness",
            "cauda_equina",
        )
    )
)
# Concepts read by their kind rather than by name: every therapy concept is a trial of care.
READ_KINDS = ("therapy",)
NAMED_VARIANTS = (
    "CN-V2",
    "CN-V7",
    "CN-V8",
    "CN-V8-NO-SIGNS",
    "LBP-ACP-MARKERS",
    "CHILD-V2",
    "TRAUMA-C-LOW",
    "REPEAT-MRI",
    "FOLLOW-UP",
    "CHILD-V1",
    "CHILD-SPONDYLOLYSIS",
    "DEMYEL-V1",
)
CITED_GUIDELINES = (
    "ACP_2011",
    "ACP_2017",
    "ACP_APS_2007",
    "ACR_BACKPAIN_CHILD",
    "ACR_CNECK_2018",
    "ACR_CNECK_2024",
    "ACR_DEMYELINATING",
    "ACR_INFX_2021",
    "ACR_LBP_2021",
    "ACR_MYELO_2020",
    "ACR_TRAUMA",
    "ACR_VCF_2018",
    "ASRA_2018",
    "CCR_2001",
    "CW_AAFP",
    "CW_ACR",
    "CW_NASS",
    "HEDIS_LBP_MY2025",
    "IDSA_2015",
    "NICE_NG234",
    "NICE_NG59",
    "NOR_2010",
    "OP8",
)


def knowledge_gaps(mappings: Mappings) -> list[str]:
    """What these rules read by name that the mappings do not define (empty when they fit)."""
    gaps = [f"concept '{c}'" for c in READ_CONCEPTS if c not in mappings.concepts]
    variants = {v for by_region in VARIANTS.values() for v in by_region.values()} | set(NAMED_VARIANTS)
    for variant_id in sorted(variants):
        try:
            mappings.variant(variant_id)
        except KeyError:
            gaps.append(f"guideline variant '{variant_id}'")
    gaps += [f"guideline '{g}'" for g in CITED_GUIDELINES if g not in mappings.guidelines]
    return gaps
