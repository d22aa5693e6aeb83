"""The Markdown report of ``benchmarks/vs_peers.py`` (the ``vs_peers`` section of ``benchmarks/RESULTS.md``): one
table row per necklace / peer pair, the deployed and compiled columns and the notes, from the result dict that
script writes to ``vs_peers.json``."""

from __future__ import annotations

from typing import Any


def _mb(n: int) -> float:
    return n / 2**20


def _f(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}"


def _deployed_cells(p: dict[str, Any]) -> list[str]:
    """The two deployed columns of a pair's row: ``nk ms / peer ms`` and the ratio nk deployed / peer deployed."""
    d = p.get("eval_deployed")
    if d is None:
        return ["-", "-"]
    pd = d.get("peer_deploy")  # absent in entries kept (--merge) from runs before peer deploy forms were timed
    star = "" if pd and pd["has_deploy_form"] and "note" not in pd else " (eager)"
    nk = _f(d["necklace_deployed"]["median_ms"]) if "necklace_deployed" in d else "-"
    if "peer_deployed" not in d:
        return [f"{nk} / -", "-"]
    cells = [f"{nk} / {_f(d['peer_deployed']['median_ms'])}{star}"]
    if "ratio_deployed_over_peer_deployed" in d:
        r = d["ratio_deployed_over_peer_deployed"]
        cells.append(f"**{_f(r['median'], 3)}** [{_f(r['p25'], 2)}-{_f(r['p75'], 2)}]{star}")
    else:
        cells.append("-")
    return cells


def _compiled_note(d: dict[str, Any]) -> str:
    """The notes line of ``--compile``: ratio of the compiled necklace neck to the peer's deployed form."""
    if "note" in d:
        return str(d["note"])
    r = d["ratio_compiled_over_peer"]
    return (
        f"necklace.compile_model(backend={d['backend']!r}) {_f(d['necklace_compiled']['median_ms'])} ms vs peer "
        f"{d['peer_form']} {_f(d['peer']['median_ms'])} ms in rounds of their own: ratio compiled / peer "
        f"{d['peer_form']} **{_f(r['median'], 3)}** [{_f(r['p25'], 2)}-{_f(r['p75'], 2)}] (compile "
        f"{d['compile_s']:.1f} s, not in the latency; relative diff vs peer {d['max_rel_diff_vs_peer']:.1g})"
    )


def _deployed_notes(p: dict[str, Any]) -> list[str]:
    """Notes lines on the deployed forms of one pair (necklace.deploy, the peer's deploy form or its absence)."""
    notes: list[str] = []
    d = p.get("eval_deployed")
    if d is None:
        notes += [p[k] for k in ("deployed_note", "peer_deploy_note") if p.get(k)]
        return notes
    if "necklace_deployed" in d:
        notes.append(
            f"{d['what'].split(':')[0]} {_f(d['necklace_deployed']['median_ms'])} ms, "
            f"ratio deployed/peer {_f(d['ratio_deployed_over_peer']['median'], 3)} "
            f"(max abs diff {d['equality_vs_peer']['max_abs_diff']:.2g}"
            + (
                f", relative {d['equality_vs_peer']['max_rel_diff']:.1g})"
                if "max_rel_diff" in d["equality_vs_peer"]
                else ")"
            )
        )
    elif p.get("deployed_note"):
        notes.append(p["deployed_note"])
    pd = d.get("peer_deploy")
    if pd is None:  # kept (--merge) from a run before peer deploy forms were timed
        return notes
    if pd["has_deploy_form"] and "note" not in pd:
        text = (
            f"peer deployed ({pd['what']}) {_f(d['peer_deployed']['median_ms'])} ms, "
            f"{pd['params'] / 1e6:.3f} M params, {pd['macs'] / 1e9:.3f} GMACs, "
            f"ratio peer deployed/peer eager {_f(d['ratio_peer_deployed_over_peer']['median'], 3)} "
            f"(max abs diff vs its eager form {pd['equality_vs_peer_eager']['max_abs_diff']:.2g})"
        )
    else:
        text = pd["note"]
    if "ratio_deployed_over_peer_deployed" in d:
        text += f"; ratio necklace deployed / peer deployed {_f(d['ratio_deployed_over_peer_deployed']['median'], 3)}"
    notes.append(text)
    return notes


def _malloc_what(mode: str) -> str:
    if mode == "steady":
        return "steady (glibc keeps freed memory: no call pays page faults another caused; `common.steady_allocator`)"
    return "default (glibc as it comes: page faults per call depend on what ran before; see the notes)"


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    s = result["settings"]
    cpu = env["cpu"]
    vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "## necklace vs peers (`benchmarks/vs_peers.py`)",
        "",
        f"- date: {env['date_utc']}; git {env.get('git', {}).get('commit')}"
        f"{' (uncommitted changes)' if env.get('git', {}).get('dirty') else ''}",
        f"- machine: {cpu['model']}, {cpu['physical_cores']} physical cores / {cpu['logical_cpus']} logical "
        f"({cpu['usable_cpus']} usable); load average at start {env['load_avg_1_5_15']}",
        f"- versions: python {env['python']}, {vers}",
        f"- settings: float32, batch 1, {s['threads']} threads, eval + no_grad; {s['warmup']} warm-up rounds, "
        f"median of {s['repeats']} interleaved rounds (train: {s['train_repeats']}); command `{s['command']}`",
        "- ratio = median over rounds of t_necklace / t_peer (< 1: necklace faster), [p25-p75] in brackets; "
        "GMACs from torch's FlopCounterMode (convs only); roofline share = achieved GMAC/s / GMAC/s of a "
        f"3x3 conv 256->256 at {s['roofline_hw']}x{s['roofline_hw']} timed in the same rounds",
        "- train = train() forward + backward of sum(outputs), inputs requiring grad; peak MB = peak of new "
        "tensor memory in torch's CPU allocator during one step (torch.profiler allocation events)",
        "- rounds in balanced Latin-square orders (every callable follows every other equally often)"
        + ("; each timed eval call right after an untimed call of the same neck" if s.get("deployed") else "")
        + "; malloc "
        f"{_malloc_what(s.get('malloc', 'default'))}",
    ]
    has_dep = any("eval_deployed" in p or "deployed_note" in p for c in result["configs"] for p in c["pairs"])
    header = (
        "| config | peer | max abs diff (train input grads) | params M (nk / peer) | GMACs | necklace ms | peer ms "
        "| ratio nk/peer | GMAC/s (nk / peer) | roofline share (nk / peer) | train ms (nk / peer) | train ratio "
        "| train peak MB (nk / peer) |"
    )
    if has_dep:
        lines.append(
            "- deployed = necklace.deploy(neck) vs the peer's own deployment form (ultralytics fuse(), mmyolo "
            "switch_to_deploy()), timed in the same eval rounds; (eager) = the peer has no deploy form (or it "
            "failed its check): its eager form stands in"
        )
        header += " deployed ms (nk / peer) | ratio deployed nk / deployed peer |"
    n_cols = header.count("|") - 1
    lines += ["", header, "|---" * n_cols + "|"]
    notes: list[str] = []
    roofs: list[str] = []
    for c in result["configs"]:
        if "roofline" in c:
            r = c["roofline"]
            spread = (r["p75_ms"] - r["p25_ms"]) / r["median_ms"] * 100
            roofs.append(f"{c['config']} {_f(r['gmac_per_s'], 1)} (IQR {spread:.0f}% of median)")
        for p in c["pairs"]:
            label = f"{c['config']} ({c['image_size'][0]}x{c['image_size'][1]})"
            if p["status"] != "ok":
                diff = f"{p['equality']['max_abs_diff']:.2g}" if "equality" in p else "-"
                lines.append(
                    f"| {label} | {p['peer']} | {diff} | {p['status']}: {p.get('note', '')} |" + " |" * (n_cols - 4)
                )
                continue
            e = p["eval"]
            r = e["ratio_necklace_over_peer"]
            row = [
                label,
                p["peer"],
                f"{p['equality']['max_abs_diff']:.2g}"
                + (f" (grad {p['train']['input_grad_max_abs_diff']:.2g})" if "train" in p else ""),
                f"{p['params']['necklace'] / 1e6:.3f} / {p['params']['peer'] / 1e6:.3f}",
                f"{p['macs']['necklace'] / 1e9:.3f}"
                + ("" if p["macs"]["necklace"] == p["macs"]["peer"] else f" / {p['macs']['peer'] / 1e9:.3f}"),
                _f(e["necklace"]["median_ms"]),
                _f(e["peer"]["median_ms"]),
                f"**{_f(r['median'], 3)}** [{_f(r['p25'], 2)}-{_f(r['p75'], 2)}]",
                f"{_f(e['gmac_per_s']['necklace'], 1)} / {_f(e['gmac_per_s']['peer'], 1)}",
                f"{_f(e['roofline_share']['necklace'])} / {_f(e['roofline_share']['peer'])}",
            ]
            if "train" in p:
                t = p["train"]
                m = p["memory"]["train_step"]
                row += [
                    f"{_f(t['necklace']['median_ms'], 1)} / {_f(t['peer']['median_ms'], 1)}",
                    _f(t["ratio_necklace_over_peer"]["median"], 3),
                    f"{_f(_mb(m['necklace']['peak_bytes']), 1)} / {_f(_mb(m['peer']['peak_bytes']), 1)}",
                ]
            else:
                row += ["-", "-", "-"]
            if has_dep:
                row += _deployed_cells(p)
            lines.append("| " + " | ".join(row) + " |")
        notes += [f"{c['config']}: {n}" for n in c.get("notes", [])]
        if "error" in c:
            notes.append(f"{c['config']}: failed: {c['error']}")
        cs = c.get("settings")
        mine = {k: s[k] for k in ("threads", "repeats", "train_repeats", "warmup")}
        if c.get("run_utc", env["date_utc"]) != env["date_utc"] or (cs is not None and cs != mine):
            notes.append(f"{c['config']}: kept from an earlier run ({c.get('measured_utc')}, settings {cs})")
        pf = c.get("minor_faults_per_call")
        if pf and any(v >= 1 for v in pf.values()):
            notes.append(
                f"{c['config']}: minor page faults per timed call: " + ", ".join(f"{k} {v:.0f}" for k, v in pf.items())
            )
        for p in c["pairs"]:
            notes += [f"{c['config']} vs {p['peer']}: {n}" for n in _deployed_notes(p)]
            if "compiled" in p:
                notes.append(f"{c['config']} vs {p['peer']}: {_compiled_note(p['compiled'])}")
    if roofs:
        lines += [
            "",
            f"Roofline GMAC/s measured in each config's rounds: {', '.join(roofs)}. A wide roofline IQR or a "
            "load average above 0 at start means other processes shared the cores: compare ratios only.",
        ]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
