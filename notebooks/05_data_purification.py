# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Purifying the data before the model (PAD-FT)
#
# **Question.** PAD-FT (Xu, Gu, Sakurai) needs no clean data: it keeps, from the poisoned training set
# itself, the `n_c` samples per class with the lowest symmetric cross-entropy (SCE) under the victim,
# assumes them clean, learns activation-clipping bounds on them (PAD), and then fine-tunes the classifier
# with SCE plus a consistency term (PAD-FT). Its value rests on one premise: the low-SCE set is clean. We
# measure how clean it is as `N_c` grows, repeat the `N_c` ablation (PAD-FT Table III), and compare PAD
# with PAD-FT.
#
# ![Poisons among the SCE-selected samples, this run](../figures/pad_selection_purity.png)

# %% tags=["parameters"]
profile = ""  # smoke, cpu or paper; "" means $PURIFY_PROFILE, else cpu without a GPU and paper with one
device = "auto"
seed = 0
victims = []  # "attack:rate"; empty means this section's default for the profile
selection_sizes = []  # n_c values (per class) for the purity curve
ablation_sizes = []  # n_c values (per class) for PAD-FT's N_c ablation (Table III)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from purify_lib.cli import parse_specs
from purify_lib.defenses.pad import sce_scores
from purify_lib.plots import victim_label
from purify_lib.section import Section

DEFAULTS = {
    "smoke": dict(victims=["blended:0.1"], selection_sizes=[10, 20, 50], ablation_sizes=[20]),
    "cpu": dict(victims=["badnets:0.1", "blended:0.1"], selection_sizes=[25, 50, 100, 250, 500, 1000], ablation_sizes=[100, 250]),
    "paper": dict(victims=["badnets:0.1", "blended:0.1", "wanet:0.1"], selection_sizes=[25, 50, 100, 250, 500, 1000, 2000],
                  ablation_sizes=[100, 200, 300, 400, 500, 600]),
}
section = Section("05_data_purification", profile, device, seed)
s = section.settings(DEFAULTS, victims=victims, selection_sizes=selection_sizes, ablation_sizes=ablation_sizes)

# %% [markdown]
# ## How clean is the low-SCE set?
#
# SCE is scored once per victim over its poisoned training set; the selection for each `n_c` is then the
# `n_c` lowest per class. The zoo knows which samples were poisoned, so we can count them.

# %%
purity_rows, sce_medians = [], {}
for attack, rate in parse_specs(s["victims"]):
    victim = section.victim(attack, rate)
    poisoned = victim.poisoned_train()
    is_poison = torch.zeros(len(poisoned.data), dtype=torch.bool)
    is_poison[poisoned.poisoned] = True
    scores = sce_scores(victim.model, poisoned.data)
    labels = poisoned.data.labels
    target_clean = (labels == victim.attack.target) & ~is_poison
    sce_medians[f"{attack} {rate:g}"] = (scores[is_poison].median().item(), scores[target_clean].median().item())
    for n_c in s["selection_sizes"]:
        kept = torch.cat([members[scores[members].argsort()[:n_c]] for c in labels.unique()
                          for members in [torch.nonzero(labels == c).squeeze(1)]])
        purity_rows.append({"victim": victim_label(victim), "n_c": n_c, "N_c": len(kept), "poisons kept": int(is_poison[kept].sum()),
                            "poison share (%)": 100 * is_poison[kept].float().mean().item(),
                            "poison share in the training set (%)": 100 * is_poison.float().mean().item(),
                            "target-class slots that are poisons (%)": 100 * is_poison[kept[labels[kept] == victim.attack.target]].float().mean().item()})
purity = pd.DataFrame(purity_rows)
section.table(purity, "pad_selection_purity", "Poisons among the n_c lowest-SCE samples per class (PAD-FT's self-purified set).")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
sns.lineplot(data=purity, x="N_c", y="poison share (%)", hue="victim", marker="o", ax=axes[0])
sns.lineplot(data=purity, x="N_c", y="target-class slots that are poisons (%)", hue="victim", marker="o", ax=axes[1], legend=False)
for ax in axes:
    ax.set(xscale="log")
axes[0].set_title("all kept samples")
axes[1].set_title("kept samples labelled as the target class")
fig.suptitle(f"How clean is the low-SCE selection? (profile {section.profile.name})")
section.figure(fig, "pad_selection_purity")
purity.round(2)

# %% [markdown]
# ## PAD-FT against N_c (PAD-FT Table III), and PAD against PAD-FT

# %%
attack, rate = parse_specs(s["victims"])[0]
first = section.victim(attack, rate)
ablation = pd.DataFrame([section.row(first, result, n_c=n_c, N_c=n_c * first.splits.num_classes, kept_poisons=result.extra.get("kept_poisoned"))
                         for n_c in s["ablation_sizes"] for result in [section.defend(first, "pad_ft", n_c=n_c)]])
section.table(ablation, "pad_ft_table3_nc", f"PAD-FT on {attack} {rate:g} against N_c (PAD-FT Table III); ACC/ASR/RA in %.")
comparison_rows = []
for attack_name, victim_rate in parse_specs(s["victims"]):
    victim = section.victim(attack_name, victim_rate)
    comparison_rows.append(section.row(victim))
    for method in ("pad", "pad_ft"):
        result = section.defend(victim, method)
        comparison_rows.append(section.row(victim, result, kept_poisons=result.extra.get("kept_poisoned")))
comparison = pd.DataFrame(comparison_rows)
section.table(comparison, "pad_vs_pad_ft", "PAD (clipping on the self-purified set) against PAD-FT (then classifier fine-tuning); ACC/ASR/RA in %.")
comparison.round(2)

# %% [markdown]
# ## Do the paper's claims hold here?

# %%
learned = [f"{a} {r:g}" for a, r in parse_specs(s["victims"]) if section.victim(a, r).backdoored]
paper_size = purity[purity["victim"].isin(learned)]
paper_size = paper_size[paper_size["n_c"] == min(s["selection_sizes"], key=lambda n: abs(n - 250))]
if not section.claims.check("The low-SCE selection is nearly clean: under 1% poisons at N_c closest to the paper's 2500",
                        not paper_size.empty and (paper_size["poison share (%)"] < 1).all(),
                        ", ".join(f"{r['victim']}: {r['poisons kept']} of {r['N_c']} kept are poisons ({r['poison share (%)']:.1f}%; {r['target-class slots that are poisons (%)']:.0f}% of the target class's slots)" for _, r in paper_size.iterrows())) and not paper_size.empty:
    # The selection keeps the n_c lowest-SCE samples of each class: do the poisons score lower than the clean target-class images?
    lower = all(sce_medians[v][0] < sce_medians[v][1] for v in paper_size["victim"])
    section.claims.diagnose(("the poisons score a lower SCE than the clean images of the target class they are labelled with, so the "
                         "per-class selection fills the target class's slots with them first" if lower else
                         "the poisons do not all score a lower SCE than the clean target-class images, so SCE ranking alone does not explain it")
                        + " (median SCE, poisons vs clean target class: " + ", ".join(f"{v} {p:.3f} vs {c:.3f}" for v, (p, c) in sce_medians.items()) + ")")
# Table III's BadNets-10% ASR ranges from 8.8% (N_c 3000) to 16.1% (N_c 1000): under 10% only at 2000-3000.
if not section.claims.check("PAD-FT keeps ASR within Table III's range at every N_c tried (at most 16.1%)",
                        first.backdoored and (ablation["asr"] <= 16.1).all(), ", ".join(f"N_c {r.N_c}: ASR {r.asr:.1f}%" for r in ablation.itertuples())) and first.backdoored:
    # Is the selection the cause?  The same PAD-FT on the same set with the known poisons taken out first (an oracle).
    oracle = section.defend(first, "pad_ft", without_poisons=True).history[-1]
    section.claims.diagnose(("the selection: " if oracle["asr"] <= 16.1 else "not the selection alone: ")
                        + ", ".join(f"N_c {r.N_c}: {r.kept_poisons} poisons kept, ASR {r.asr:.1f}%" for r in ablation.itertuples())
                        + f"; with the poisons taken out before selecting (default N_c), ASR {oracle['asr']:.1f}%, ACC {oracle['acc']:.1f}%")
pivot = comparison[comparison["backdoored"]].pivot_table(index="attack", columns="defense", values="asr")
if not section.claims.check("Fine-tuning after clipping helps: PAD-FT's ASR is below PAD's on every victim",
                        not pivot.empty and (pivot["pad_ft"] < pivot["pad"]).all(),
                 ", ".join(f"{a}: PAD {r.pad:.1f}%, PAD-FT {r.pad_ft:.1f}%" for a, r in pivot.iterrows())) and not pivot.empty:
    # Fine-tuning re-teaches the trigger if the tuning set holds poisons: tune the same victims on the oracle set.
    oracle_asr = {f"{a} {r:g}": [section.defend(v, m, without_poisons=True).history[-1]["asr"] for m in ("pad", "pad_ft")]
                  for a, r in parse_specs(s["victims"]) for v in [section.victim(a, r)] if v.backdoored}
    kept = comparison[comparison["defense"] == "pad_ft"].set_index("attack")["kept_poisons"]
    section.claims.diagnose("PAD-FT tunes on the low-SCE set, poisons included (" + ", ".join(f"{a}: {int(k)}" for a, k in kept.items())
                        + " kept); with the poisons taken out before selecting: "
                        + ", ".join(f"{v}: PAD {pad:.1f}%, PAD-FT {pad_ft:.1f}%" for v, (pad, pad_ft) in oracle_asr.items()))
section.finish();
