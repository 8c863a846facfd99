/**
 * How a decision explains itself: the data plane passes null and pays one
 * compare per step; the tracer passes an Explain that records each step
 * (constant strings only, so nothing is built on the packet path).
 */

/** Records the steps of one decision (the tracer); the data plane passes null. */
export interface Explain {
  /** One step: its stage, the outcome it ended in (-1 when the frame went on), and why; `port` when it concerns one receiver of several. */
  step(stage: string, outcome: number, why: string, port?: number): void;
}

/** Tell `ex` (if any) about a step; returns the outcome, so a stage can `return say(...)`. */
export function say(ex: Explain | null, stage: string, outcome: number, why: string): number {
  if (ex !== null) ex.step(stage, outcome, why);
  return outcome;
}
