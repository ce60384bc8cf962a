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
# # 1. Revisiting fine-tuning as a defense (FST §3)
#
# **Question.** Fine-tuning on a little clean data is the cheapest purification there is. Min et al.
# ("Towards Stable Backdoor Purification through Feature Shift Tuning", NeurIPS 2023, §3) report that
# vanilla fine-tuning (FT) and linear probing (LP) remove a backdoor when the poisoning rate is high but
# fail when it is low, and that letting the features shift, by re-initialising the head (FE-tuning,
# FT-init), helps. We repeat their Figure 2 (ACC and ASR against the poisoning rate, for a few learning
# rates) and Table 1 (the four tuning modes at low rates).
#
# ![FST Figure 2, this run](../figures/fst_fig2_rate_sweep.png)

# %% tags=["parameters"]
profile = ""  # smoke, cpu or paper; "" means $PURIFY_PROFILE, else cpu without a GPU and paper with one
device = "auto"
seed = 0
attacks = []  # poison-label attacks swept over `rates`; empty lists mean this section's default for the profile
rates = []
clean_label = []  # clean-label victims as "attack:rate", shown as single points
learning_rates = []  # FT and LP learning rates (FST Fig. 2)
low_rates = []  # the rates of FST Table 1

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from purify_lib.cli import parse_specs
from purify_lib.plots import mark_not_learned
from purify_lib.run import Run

DEFAULTS = {
    "smoke": dict(attacks=["blended"], rates=[0.1], clean_label=[], learning_rates=[0.01], low_rates=[0.1]),
    "cpu": dict(attacks=["badnets", "blended"], rates=[0.01, 0.05, 0.1], clean_label=["sig:0.05"],
                learning_rates=[0.01, 0.02], low_rates=[0.01, 0.05]),
    "paper": dict(attacks=["badnets", "blended"], rates=[0.005, 0.01, 0.05, 0.1], clean_label=["sig:0.05", "sig:0.01"],
                  learning_rates=[0.005, 0.01, 0.02], low_rates=[0.005, 0.01]),
}
run = Run("01_fine_tuning", profile, device, seed)
s = run.settings(DEFAULTS, attacks=attacks, rates=rates, clean_label=clean_label, learning_rates=learning_rates, low_rates=low_rates)
victims = [(attack, rate) for attack in s["attacks"] for rate in s["rates"]] + parse_specs(s["clean_label"])

# %% [markdown]
# ## FT and LP across poisoning rates (FST Figure 2)
#
# Each victim comes from the zoo (trained once, shared by every notebook); each defense result is cached
# beside it. FT and LP use FST's 2% of the training set as clean data and its recipe (10 epochs, SGD, cosine).

# %%
rows = []
for attack, rate in victims:
    victim = run.victim(attack, rate)
    rows.append(run.row(victim, lr=None))
    for lr in s["learning_rates"]:
        for method in ("ft", "lp"):
            rows.append(run.row(victim, run.defend(victim, method, lr=lr), lr=lr))
sweep = pd.DataFrame(rows)
sweep["method"] = [f"{d} lr {lr:g}" if d != "none" else "no defense" for d, lr in zip(sweep["defense"], sweep["lr"])]
run.table(sweep, "fst_fig2_rate_sweep", "FT and LP against the poisoning rate (FST Fig. 2); ACC, ASR, RA in %.")
sweep.round(1)

# %%
poison_label = sweep[sweep["attack"].isin(s["attacks"])]
fig, axes = plt.subplots(2, len(s["attacks"]), figsize=(4.2 * len(s["attacks"]), 6.5), squeeze=False, sharex=True)
for col, attack in enumerate(s["attacks"]):
    for row, metric in enumerate(("acc", "asr")):
        ax = axes[row, col]
        sns.lineplot(data=poison_label[poison_label["attack"] == attack], x="rate", y=metric, hue="method", style="method",
                     markers=True, dashes=False, ax=ax, legend=(row == 0 and col == len(s["attacks"]) - 1))
        mark_not_learned(ax, poison_label[poison_label["attack"] == attack], "rate", metric)
        ax.set(xscale="log", xlabel="poisoning rate", ylabel=metric.upper() + " (%)", title=f"{attack}: {metric.upper()}")
if axes[0, -1].get_legend():
    sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1))
fig.suptitle(f"FT and LP against the poisoning rate (profile {run.profile.name}; hollow rings: backdoor not learned)")
run.figure(fig, "fst_fig2_rate_sweep")

# %% [markdown]
# Clean-label victims (SIG poisons only target-class images) are single points:

# %%
sweep[~sweep["attack"].isin(s["attacks"])].round(1)

# %% [markdown]
# ## The four tuning modes at low rates (FST Table 1)
#
# LP tunes the head only; FE-tuning re-initialises the head, freezes it and tunes the rest; FT tunes
# everything; FT-init re-initialises the head and tunes everything. All at FST's learning rate 0.01.
#
# **Which variant this table shows.** FST's Table 1 comes from its official `fine_tune/ft.py`, which
# rescales the head to its original norm after every step in every mode and keeps the network in
# train mode, so LP re-estimates the BatchNorm statistics. That is what runs here (the defaults,
# `project_head=True`, `frozen_bn=False`). The modes as the paper's §3 describes them, without the
# rescaling and with a truly frozen LP, are `project_head=False` (and `frozen_bn=True` for LP).

# %%
modes = ["lp", "fe_tuning", "ft", "ft_init"]
table_rows = []
for attack, rate in [(a, r) for a in s["attacks"] for r in s["low_rates"]]:
    victim = run.victim(attack, rate)
    table_rows.append(run.row(victim))
    table_rows += [run.row(victim, run.defend(victim, method, lr=0.01)) for method in modes]
table1 = pd.DataFrame(table_rows)
wide = table1.pivot_table(index=["attack", "rate", "backdoored"], columns="defense", values=["acc", "asr"]).round(1)
wide = wide.reindex(columns=[(m, d) for d in ["none", *modes] for m in ("acc", "asr")])
wide.columns = [f"{d} {m.upper()}" for m, d in wide.columns]
wide = wide.reset_index()
run.table(wide, "fst_table1_low_rates", "LP, FE-tuning, FT and FT-init at low poisoning rates (FST Table 1); ACC/ASR in %.")
wide

# %% [markdown]
# ## Do the paper's claims hold here?
#
# Only victims whose backdoor was learned (ASR ≥ 50% before defense) count: a defense cannot be said
# to remove a backdoor that is not there. "Removed" means ASR below 20% after the defense.

# %%
learned = sweep[sweep["backdoored"] & sweep["attack"].isin(s["attacks"])]
tuned = learned[learned["defense"] != "none"]
high, low = max(s["rates"]), min(learned["rate"], default=None)
at_high = tuned[tuned["rate"] == high]
if not run.claims.check("FT removes the backdoor at the highest rate with some learning rate (ASR < 20%)",
                        not at_high.empty and (at_high[at_high["defense"] == "ft"].groupby("attack")["asr"].min() < 20).all(),
                        f"best FT ASR at rate {high:g}: " + ", ".join(f"{a} {v:.1f}%" for a, v in at_high[at_high['defense'] == 'ft'].groupby('attack')['asr'].min().items())) and not at_high.empty:
    # Is the learning rate the limit?  FT once more at 2.5x and 5x the sweep's largest rate, on the same victims.
    larger = pd.DataFrame([run.row(victim, run.defend(victim, "ft", lr=lr), lr=lr) for attack in s["attacks"]
                           for victim in [run.victim(attack, high)] if victim.backdoored for lr in (0.05, 0.1)])
    removed = larger[larger["asr"] < 20]
    run.claims.diagnose(("a matter of learning rate: FT removes it above the sweep's rates" if len(removed) else
                         "not the learning rate: FT keeps the backdoor even at 5x the sweep's largest rate")
                        + " (" + ", ".join(f"{r.attack} lr {r.lr:g}: ASR {r.asr:.1f}%, ACC {r.acc:.1f}%" for r in larger.itertuples()) + ")")
at_low = tuned[(tuned["rate"] == low) & (tuned["rate"] < high)]
run.claims.check("FT and LP fail at the lowest rate whose backdoor was learned (ASR stays >= 20% for every learning rate)",
                 not at_low.empty and (at_low["asr"] >= 20).all(),
                 f"rate {low}: " + ", ".join(f"{r.attack} {r.method} {r.asr:.1f}%" for r in at_low.itertuples()) if not at_low.empty else "no backdoored victim below the highest rate")
low_table = table1[table1["backdoored"] & (table1["defense"] != "none")]
means = low_table.groupby("defense")["asr"].mean()
run.claims.check("FE-tuning and FT-init lower ASR more than LP and FT at low rates (Table 1 means)",
                 not means.empty and max(means.get("fe_tuning", 100), means.get("ft_init", 100)) < min(means.get("lp", 0), means.get("ft", 0)),
                 "mean ASR " + ", ".join(f"{k} {v:.1f}%" for k, v in means.items()))
run.finish();
