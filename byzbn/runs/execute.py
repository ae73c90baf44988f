"""Train a validated Plan: every scheme × scenario run, with checkpoints, metrics and the summary in --out.

A run killed at any instant resumes (--resume) from its last checkpoint to the same metrics; a finished
run is read back from its checkpoint and never retrained.
"""
from __future__ import annotations

import math
import sys
import time

from byzbn.runs import results
from byzbn.runs.build import build_federation
from byzbn.runs.config import Plan
from byzbn.runs.diagnostics_report import plot_diagnostics, summary_fields
from byzbn.runs.diagnostics_run import RunDiagnostics
from byzbn.runs.errors import RunError, breaks_contract, one_line, refuses_non_finite


def _reached(before: int, after: int, every: int) -> bool:
    """Whether going from step `before` to `after` (one DSGD step or one FedAvg round) passed a multiple of every."""
    return after // every > before // every


def run_one(plan: Plan, scheme_name: str, scenario_name: str, done_records: list[dict]) -> tuple[dict, list[dict]]:
    """Train one scheme × scenario (resuming from its checkpoint); returns (summary entry, metric records)."""
    from tqdm import tqdm

    c = plan.config
    ckpt_path = plan.out / "checkpoints" / f"{results.run_key(scheme_name, scenario_name)}.pt"
    saved = results.load_checkpoint(ckpt_path) if plan.resume else None
    if saved is not None and saved["finished"]:
        return saved["summary"], saved["records"]
    fed = build_federation(plan.config, scheme_name, scenario_name, plan.dataset, plan.client_indices, plan.device,
                           plan.attack, plan.defense)
    diagnostics = RunDiagnostics(fed) if c.diagnostics else None
    x_test, y_test = plan.dataset.x_test.to(plan.device), plan.dataset.y_test.to(plan.device)
    records, window, wall, status = [], [], 0.0, "ok"
    if saved is not None:
        fed.load_state_dict(saved["federation"])
        records, window, wall = saved["records"], saved["window"], saved["wall_s"]
        if diagnostics is not None:
            diagnostics.load_state_dict(saved["diagnostics"])
    start = time.perf_counter()

    def evaluate() -> None:
        acc, loss = fed.evaluate(x_test, y_test)
        records.append({"scheme": scheme_name, "scenario": scenario_name, "step": fed.step_count,
                        "test_acc": acc, "test_loss": results.finite_or_none(loss),
                        "train_loss": results.finite_or_none(sum(window) / len(window)) if window else None,
                        "comm_rounds": fed.comm_rounds, "stats_clamped": fed.stats_clamped})
        if fed.samples and fed.participants is not None:  # partial participation: the last step's sample
            records[-1].update(participants=fed.participants.n, byzantine_sampled=fed.participants.f)
        if diagnostics is not None:
            records[-1].update(diagnostics.measure())
        window.clear()

    def summary(finished_wall: float) -> dict:
        accs = [r["test_acc"] for r in records]
        return {"scheme": scheme_name, "scenario": scenario_name, "final_acc": accs[-1], "best_acc": max(accs),
                "status": status, "steps_done": fed.step_count, "comm_rounds": fed.comm_rounds,
                "stats_clamped": fed.stats_clamped, "wall_s": round(finished_wall, 3),
                **({} if fed.clipped_fraction is None else {"clipped_fraction": round(fed.clipped_fraction, 6)}),
                **(summary_fields(records) if diagnostics is not None else {})}

    if not records:
        evaluate()
    bar = tqdm(total=c.steps, initial=fed.step_count, desc=f"{scheme_name} / {scenario_name}",
               disable=plan.quiet or not sys.stdout.isatty(), leave=False, dynamic_ncols=True)
    while fed.step_count < c.steps:
        before = fed.step_count
        try:
            loss = fed.step()
        except ValueError as error:
            if breaks_contract(error):  # a plugin returned the wrong shape or type: its fault, in one line
                raise RunError(f"{scheme_name} / {scenario_name} at step {fed.step_count + 1}: "
                               f"{one_line(error)}") from error
            if not refuses_non_finite(error):
                raise
            # A rule refusing a NaN/Inf submission (MoNNA's pivot): this run diverged, the comparison goes on.
            status = f"diverged: {one_line(error)} at step {fed.step_count + 1}"
            evaluate()
            break
        if diagnostics is not None:
            diagnostics.after_step()
        window.append(loss)
        bar.update(fed.step_count - before)
        problem = (f"non-finite training loss ({loss}) at step {fed.step_count}" if not math.isfinite(loss)
                   else fed.non_finite())
        if problem is not None:
            status = f"diverged: {problem}" + ("" if "step" in problem else f" after step {fed.step_count}")
            evaluate()
            break
        if _reached(before, fed.step_count, c.eval_every) or fed.step_count == c.steps:
            evaluate()
            bar.set_postfix(acc=f"{100 * records[-1]['test_acc']:.1f}%")
        if _reached(before, fed.step_count, c.checkpoint_every) and fed.step_count < c.steps:
            elapsed = wall + time.perf_counter() - start
            extra = {} if diagnostics is None else {"diagnostics": diagnostics.state_dict()}
            results.save_checkpoint(ckpt_path, {"finished": False, "federation": fed.state_dict(), "records": records,
                                                "window": window, "wall_s": elapsed, **extra})
            results.write_metrics(plan.out / "metrics.jsonl", done_records + records)
    bar.close()
    entry = summary(wall + time.perf_counter() - start)
    results.save_checkpoint(ckpt_path, {"finished": True, "summary": entry, "records": records})
    return entry, records


def run_plan(plan: Plan) -> list[dict]:
    """Run every scheme × scenario of the plan, writing the outputs as runs finish; returns the summary."""
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "checkpoints").mkdir(exist_ok=True)
    if not plan.resume:
        results.atomic_write_text(plan.out / "config.json", plan.config.text())
    summary, records = [], []
    for scheme_name, scenario_name in plan.runs:
        entry, run_records = run_one(plan, scheme_name, scenario_name, records)
        summary.append(entry)
        records.extend(run_records)
        results.write_metrics(plan.out / "metrics.jsonl", records)
        results.write_summary(plan.out, summary, plan.schemes, plan.scenarios)
        if not plan.quiet:
            print(results.entry_line(scheme_name, scenario_name, entry), flush=True)
    results.plot_curves(plan.out / "curves.png", records, plan.schemes, plan.scenarios,
                        title=results.curves_title(plan.config))
    if plan.config.diagnostics:
        plot_diagnostics(plan.out / "diagnostics.png", records, title=results.curves_title(plan.config))
    return summary


__all__ = ["run_one", "run_plan"]
