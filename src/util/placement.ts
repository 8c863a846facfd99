/**
 * Thread placement: the forwarding thread gets one CPU of those the process
 * may use to itself; every other thread of the process (the compiling
 * worker, V8's collector and compiler helpers, libuv's pool) runs on the
 * rest.
 *
 * Why: a full reload keeps the compiling thread busy for seconds, and V8's
 * helper threads busy marking its heap. Left to the scheduler, they take the
 * forwarding thread's CPU a tick at a time: measured on two shared cores at
 * 10,000 rules, 33-45 gaps over 2 ms between forwarded frames during a reload
 * (most of them 4 ms, one tick, spent waiting to run); with placement, 4-6.
 * Data planes that must not wait do the same: Open vSwitch's PMD threads on
 * their pmd-cpu-mask, VPP's workers on their corelist, DPDK's lcores.
 *
 * Without a CPU of its own (the default: several daemons on one machine
 * would all pick the same one), the forwarding thread still goes first:
 * yieldOthers gives every other thread of the process the lowest priority
 * (nice 19, weight 15 against 1024), except those that set their own (the
 * compiling thread runs at nice 5 so that a quarantine is not starved). The
 * scheduler then rarely takes the forwarding thread's CPU from it for a
 * helper: measured at 10,000 rules, 29-55 gaps over 2 ms in a reload
 * without it, 4-17 with nice +10. At 100,000 rules, counting the forwarding
 * thread's involuntary context switches across each gap, nice +10 still left
 * 1-26 gaps per reload where another thread took its CPU, nice 19 0-5 (gaps
 * over 2 ms 20-51 against 14-19); the compiling thread at nice 5 was not
 * among the ones that took it.
 *
 * Young-generation collections run on the collecting thread alone
 * (scavengeAlone). V8 splits a scavenge between the thread that collects and
 * its helper threads, and waits for every part it handed out: a helper that
 * took a part and was then preempted (helpers yield, by the above, and share
 * CPUs with the compiling thread) holds the forwarding thread up. Measured at
 * groups1m during a full reload: the forwarding thread's scavenges, with
 * almost nothing surviving, took 7-9 ms in parallel and 0.4-0.8 ms alone;
 * gaps over 2 ms between forwarded frames 18-58 against 7-39. The compiling
 * thread's own collections, alone too, leave the other CPU to the forwarding
 * thread; its compile times did not change measurably.
 *
 * What it does not do: keep other processes (guests' vCPUs, the kernel's
 * softirqs) off that CPU. That is the host's cpuset or isolcpus, which an
 * operator sets; --forwarding-cpu names the CPU to match them.
 *
 * Who may call what: placeThreads once on the forwarding thread, before the
 * compiling thread starts; placeNewThreads from time to time on it (threads
 * made since, by libuv or V8, inherit the forwarding thread's CPU and are
 * moved); a worker calls placeSelf with the CPUs it was given. Linux only; a
 * kernel or process that refuses leaves every thread where it was, and
 * says why.
 */
import { readdirSync, readlinkSync, stat } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { getPriority, setPriority } from 'node:os';
import { native } from '../io/native.js';

export interface Placement {
  /** The forwarding thread's CPU. */
  forwarding: number;
  /** Where every other thread runs. */
  others: number[];
  /** Threads moved to `others` so far. */
  moved: number;
}

/** What placeThreads did: the placement, or null and why not. */
export type PlacementResult = { placement: Placement; reason: null } | { placement: null; reason: string };

let current: { placement: Placement; placed: Set<number>; allowed: number[] } | null = null;

/** The calling thread's id (Linux: /proc/thread-self names it). */
export function threadId(): number {
  return Number(readlinkSync('/proc/thread-self').split('/').pop());
}

/**
 * Give the calling (forwarding) thread `want` (or, for 'auto', the last CPU
 * it may use) to itself, and move every other thread of the process to the
 * rest. 'none', or fewer than two CPUs: nothing is moved.
 */
export function placeThreads(want: number | 'auto' | 'none'): PlacementResult {
  if (want === 'none') return { placement: null, reason: 'turned off (--forwarding-cpu none)' };
  if (current !== null) return { placement: current.placement, reason: null };
  const addon = native();
  let allowed: number[];
  try {
    allowed = addon.threadCpus(0);
  } catch (e) {
    return { placement: null, reason: (e as Error).message };
  }
  if (allowed.length < 2) return { placement: null, reason: `the process may use one CPU (${allowed.join(',')}): every thread shares it` };
  const forwarding = want === 'auto' ? allowed[allowed.length - 1] : want;
  if (!allowed.includes(forwarding)) return { placement: null, reason: `CPU ${forwarding} is not one this process may use (${allowed.join(',')})` };
  const others = allowed.filter((c) => c !== forwarding);
  // libuv makes its whole pool on first use, from the calling thread, and a new thread inherits its
  // maker's CPUs: make it now, so that it is among the threads moved below rather than born on ours.
  stat('/', () => undefined);
  const self = threadId();
  const e = addon.threadCpusSet(self, [forwarding]);
  if (e < 0) return { placement: null, reason: `cannot restrict the forwarding thread to CPU ${forwarding} (errno ${-e})` };
  current = { placement: { forwarding, others, moved: 0 }, placed: new Set([self]), allowed };
  placeNewThreads();
  return { placement: current.placement, reason: null };
}

/**
 * Apply `act` to each thread of the process not in `seen`; how many it
 * succeeded on. Returns the threads alive now, the `seen` of the next sweep
 * (ended ones are forgotten with it).
 */
function sweepThreads(seen: Set<number>, act: (tid: number) => boolean): { live: Set<number>; acted: number } {
  const live = new Set<number>();
  let acted = 0;
  for (const name of readdirSync('/proc/self/task')) {
    const tid = Number(name);
    live.add(tid);
    if (!seen.has(tid) && act(tid)) acted++;
  }
  return { live, acted };
}

/** Move the threads made since the last call off the forwarding thread's CPU; how many were moved. */
export function placeNewThreads(): number {
  if (current === null) return 0;
  const c = current, addon = native();
  // A thread that ended meanwhile (ESRCH) is simply gone.
  const { live, acted } = sweepThreads(c.placed, (tid) => addon.threadCpusSet(tid, c.placement.others) === 0);
  c.placed = live;
  c.placement.moved += acted;
  return acted;
}

/** The placement in force on this (the forwarding) thread, or null. */
export function placement(): Placement | null {
  return current?.placement ?? null;
}

/** A worker thread keeps off the forwarding thread's CPU from its first step: restrict the calling thread to `cpus`. */
export function placeSelf(cpus: number[]): void {
  if (cpus.length > 0) native().threadCpusSet(threadId(), cpus);
}

/**
 * Young-generation collections on the collecting thread alone, in every
 * thread of the process (V8's flags are the process's): call on the
 * forwarding thread before the compiling thread starts.
 */
export function scavengeAlone(): void {
  setFlagsFromString('--no-parallel-scavenge');
}

/** How much lower than the forwarding thread's priority every other thread of the process runs (yieldOthers). */
export const OTHERS_NICE = 19;

let yielding: { base: number; nice: number; seen: Set<number>; lowered: number } | null = null;

/**
 * Lower the priority of every other thread of the process (call on the
 * forwarding thread; again from time to time for threads made since): those
 * still at the forwarding thread's nice value go to OTHERS_NICE more; a
 * thread that set its own priority keeps it. How many were lowered.
 */
export function yieldOthers(): number {
  const self = threadId();
  if (yielding === null) {
    stat('/', () => undefined); // libuv's pool, made on first use: now, so that it is among the threads lowered
    const base = getPriority(self);
    yielding = { base, nice: Math.min(19, base + OTHERS_NICE), seen: new Set([self]), lowered: 0 };
  }
  const y = yielding;
  const { live, acted } = sweepThreads(y.seen, (tid) => {
    try {
      if (getPriority(tid) !== y.base) return false;
      setPriority(tid, y.nice);
      return true;
    } catch {
      return false; // ended meanwhile, or not allowed: it runs as it was
    }
  });
  y.seen = live;
  y.lowered += acted;
  return acted;
}

/** Threads whose priority yieldOthers lowered so far, or null when it was not called. */
export function othersYielding(): { lowered: number; nice: number } | null {
  return yielding === null ? null : { lowered: yielding.lowered, nice: yielding.nice };
}

/** Undo yieldOthers (a benchmark going on with other work): every thread it lowered back at the forwarding thread's priority, where allowed. */
export function yieldOthersUndo(): void {
  if (yielding === null) return;
  for (const name of readdirSync('/proc/self/task')) {
    try {
      if (getPriority(Number(name)) === yielding.nice) setPriority(Number(name), yielding.base);
    } catch {
      // Raising a priority needs CAP_SYS_NICE: without it the thread stays lower.
    }
  }
  yielding = null;
}

/** Undo placeThreads (a benchmark that measures as the daemon runs, then goes on with other work): every thread may use every CPU again. */
export function placementUndo(): void {
  if (current === null) return;
  const addon = native();
  for (const name of readdirSync('/proc/self/task')) addon.threadCpusSet(Number(name), current.allowed);
  current = null;
}
