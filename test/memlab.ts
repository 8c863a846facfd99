// The real data plane on in-memory ports: no devices, no root. A frame is
// pushed into one port, the port is pumped, and the result is the outcome
// counted for that frame and the ports it was sent out of.
import { Dataplane, type DataplaneOptions, type PortSpec } from '../src/datapath/dataplane.js';
import { MemoryPort } from '../src/io/memoryPort.js';
import { policyCompile, type CompiledPolicy } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';
import { OUTCOME_COUNT, OUTCOME_NAMES, type OutcomeName } from '../src/packet/verdict.js';

export interface SendResult { outcome: OutcomeName; to: string[] }

export class MemLab {
  readonly dp: Dataplane;
  readonly ports = new Map<string, MemoryPort>();
  readonly specs: PortSpec[];
  compiled: CompiledPolicy;

  /** A policy document, or one compiled already (many labs from one policy). */
  constructor(policyText: string | CompiledPolicy, opts: { uplink?: string | null; dataplane?: DataplaneOptions } = {}) {
    this.compiled = typeof policyText === 'string' ? policyCompile(policyParse(policyText, '(test)', { shadows: false }).policy!) : policyText;
    const policy = this.compiled.policy;
    this.specs = [...policy.workloads.values()].map((w) => ({ name: w.nic, mode: 'tap' as const, workload: w.name }));
    const uplink = opts.uplink === undefined ? 'twu-up' : opts.uplink;
    if (uplink !== null) this.specs.push({ name: uplink, mode: 'tap', workload: null });
    this.dp = new Dataplane(this.compiled, this.specs, {
      flowCapacity: 4096,
      ...opts.dataplane,
      portOpener: (s) => {
        const p = new MemoryPort(s.name);
        this.ports.set(s.name, p);
        return p;
      },
    });
  }

  /** Swap in a new policy document, as the controller does. */
  apply(policyText: string): void {
    const { policy } = policyParse(policyText, '(test)', { shadows: false });
    this.compiled = policyCompile(policy, this.compiled);
    this.dp.setPolicy(this.compiled);
  }

  /** The slot of the live port with this name, or -1. */
  indexOf(port: string): number {
    return this.dp.ports.findIndex((p) => !p.retired && p.spec.name === port);
  }

  /** Frames counted per outcome on one port so far. */
  outcomesOf(port: string): number[] {
    const i = this.indexOf(port);
    return Array.from(this.dp.outcomes.subarray(i * OUTCOME_COUNT, (i + 1) * OUTCOME_COUNT));
  }

  /** Send one frame in on `port`; the outcome it was counted as and where it went. */
  send(port: string, frame: Uint8Array): SendResult {
    return sendThrough(this.dp, this.ports, port, frame);
  }

  /** The frames port `name` sent out in the last send(). */
  sentBy(name: string): Uint8Array[] {
    return this.ports.get(name)!.sent;
  }

  stop(): void {
    this.dp.stop();
  }
}

/** One frame into a data plane on in-memory ports: the outcome counted for it, and the ports it left by. */
export function sendThrough(dp: Dataplane, ports: Map<string, MemoryPort>, port: string, frame: Uint8Array): SendResult {
  const i = dp.ports.findIndex((p) => !p.retired && p.spec.name === port);
  if (i < 0) throw new Error(`no port ${port}`);
  const counts = () => Array.from(dp.outcomes.subarray(i * OUTCOME_COUNT, (i + 1) * OUTCOME_COUNT));
  const before = counts();
  for (const p of ports.values()) p.sent.length = 0;
  ports.get(port)!.push(frame);
  dp.pump(i);
  const changed = counts().map((v, k) => [v - before[k], k]).filter(([d]) => d !== 0);
  if (changed.length !== 1 || changed[0][0] !== 1) throw new Error(`one frame should add one outcome, saw ${JSON.stringify(changed)}`);
  const to = [...ports.entries()].filter(([, p]) => p.sent.length > 0).map(([n]) => n);
  return { outcome: OUTCOME_NAMES[changed[0][1]], to };
}
