/**
 * What a benchmark ran on, printed with every result: these machines are
 * shared and noisy, so results are ratios against a baseline measured in the
 * same run, and the machine is named so that absolute figures can be read.
 */
import os from 'node:os';
import { PerformanceObserver } from 'node:perf_hooks';

export interface MachineInfo {
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  date: string;
}

export function machineInfo(): MachineInfo {
  return {
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    date: new Date().toISOString(),
  };
}

export function machineLine(m: MachineInfo = machineInfo()): string {
  return `machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.kernel}, Node.js ${m.node}, ${m.date}`;
}

/**
 * Counts garbage collections that started while `fn` ran. Observer entries
 * arrive asynchronously, so entries are kept by their start time, which
 * leaves out collections of the benchmark's own set-up and reporting.
 */
export async function countGcDuring(fn: () => void): Promise<number> {
  const starts: number[] = [];
  const obs = new PerformanceObserver((list) => { for (const e of list.getEntries()) starts.push(e.startTime); });
  obs.observe({ entryTypes: ['gc'] });
  const t0 = performance.now();
  fn();
  const t1 = performance.now();
  await new Promise((r) => setTimeout(r, 50));
  obs.disconnect();
  return starts.filter((s) => s >= t0 && s <= t1).length;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
