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

/** Move the threads made since the last call off the forwarding thread's CPU; how many were moved. */
export function placeNewThreads(): number {
  if (current === null) return 0;
  const addon = native();
  let moved = 0;
  // The threads alive now are the ones placed after this sweep: ended ones are forgotten with it.
  const live = new Set<number>();
  for (const name of readdirSync('/proc/self/task')) {
    const tid = Number(name);
    live.add(tid);
    // A thread that ended meanwhile (ESRCH) is simply gone.
    if (!current.placed.has(tid) && addon.threadCpusSet(tid, current.placement.others) === 0) moved++;
  }
  current.placed = live;
  current.placement.moved += moved;
  return moved;
}

/** The placement in force on this (the forwarding) thread, or null. */
export function placement(): Placement | null {
  return current?.placement ?? null;
}

/** A worker thread keeps off the forwarding thread's CPU from its first step: restrict the calling thread to `cpus`. */
export function placeSelf(cpus: number[]): void {
  if (cpus.length > 0) native().threadCpusSet(threadId(), cpus);
}

/** Undo placeThreads (a benchmark that measures as the daemon runs, then goes on with other work): every thread may use every CPU again. */
export function placementUndo(): void {
  if (current === null) return;
  const addon = native();
  for (const name of readdirSync('/proc/self/task')) addon.threadCpusSet(Number(name), current.allowed);
  current = null;
}
