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

/** Counts garbage collections while `fn` runs (observer entries arrive asynchronously). */
export async function countGcDuring(fn: () => void): Promise<number> {
  let count = 0;
  const obs = new PerformanceObserver((list) => { count += list.getEntries().length; });
  obs.observe({ entryTypes: ['gc'] });
  fn();
  await new Promise((r) => setTimeout(r, 50));
  obs.disconnect();
  return count;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
