/**
 * Real QEMU guests for tests: Debian's cloud kernel and a busybox initramfs
 * built here, one virtio-net NIC on a TAP device named by the caller (tw...),
 * driven through the serial console.
 *
 * Assets come from scripts/guest-assets.sh (qemu-system-x86, busybox-static,
 * the kernel and its virtio modules, unpacked into /var/tmp/tapwall-guest).
 * The guest's /init loads virtio-net, sets the address given on the kernel
 * command line (tw.ip=, tw.name=), starts busybox httpd on 8080 and 9090
 * (answering its name), prints TW-READY and then runs each line that arrives
 * on ttyS0 (echo off) as a shell command. run() sends one command line and
 * waits for its exit status, marked so that the marker cannot be confused
 * with anything echoed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const GUEST_ASSETS = '/var/tmp/tapwall-guest';
const MODULES = ['virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'failover', 'net_failover', 'virtio_net'];

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ${MODULES.join(' ')}; do insmod /lib/modules/$m.ko; done
for a in $(cat /proc/cmdline); do
  case "$a" in tw.ip=*) IP="\${a#tw.ip=}" ;; tw.name=*) NAME="\${a#tw.name=}" ;; esac
done
ip link set lo up
ip link set eth0 up
ip addr add "$IP" dev eth0
mkdir -p /www /tmp
echo "$NAME" > /www/index.html
httpd -p 8080 -h /www
httpd -p 9090 -h /www
stty -echo
echo TW-READY
# Commands arrive one per line on the console. Each runs in its own non-interactive shell with stdin
# from /dev/null: nothing it starts can read the next commands, and no job control or controlling
# terminal is involved (an interactive shell here was seen to exit when a background nc got a connection).
while :; do
  while IFS= read -r line; do sh -c "$line" < /dev/null; done
done
`;

/** The files of a newc cpio archive (what the kernel unpacks as its initramfs). */
type CpioEntry = { name: string; mode: number; data?: Buffer; rdev?: [number, number] };

function cpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  let ino = 1;
  const hex = (v: number) => v.toString(16).padStart(8, '0');
  for (const e of [...entries, { name: 'TRAILER!!!', mode: 0 }]) {
    const data = (e as CpioEntry).data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`);
    const [maj, min] = (e as CpioEntry).rdev ?? [0, 0];
    const header = `070701${hex(e.name === 'TRAILER!!!' ? 0 : ino++)}${hex(e.mode)}${hex(0)}${hex(0)}${hex(1)}${hex(0)}${hex(data.length)}` +
      `${hex(0)}${hex(0)}${hex(maj)}${hex(min)}${hex(name.length)}${hex(0)}`;
    parts.push(Buffer.from(header), name, pad(110 + name.length), data, pad(data.length));
  }
  return Buffer.concat(parts);
}

/** Build the guests' initramfs at `out` from busybox-static and the unpacked kernel modules. */
export function buildInitramfs(out: string, assets = GUEST_ASSETS): void {
  for (const f of ['vmlinuz', ...MODULES.map((m) => `modules/${m}.ko`)]) {
    if (!existsSync(join(assets, f))) throw new Error(`${join(assets, f)} is missing: run scripts/guest-assets.sh (the test command does)`);
  }
  const dir = (name: string) => ({ name, mode: 0o40755 });
  const entries: CpioEntry[] = [
    dir('bin'), dir('dev'), dir('proc'), dir('sys'), dir('tmp'), dir('lib'), dir('lib/modules'),
    { name: 'dev/console', mode: 0o20600, rdev: [5, 1] },
    { name: 'init', mode: 0o100755, data: Buffer.from(INIT) },
    { name: 'bin/busybox', mode: 0o100755, data: readFileSync('/bin/busybox') },
    ...MODULES.map((m) => ({ name: `lib/modules/${m}.ko`, mode: 0o100644, data: readFileSync(join(assets, 'modules', `${m}.ko`)) })),
  ];
  writeFileSync(out, cpio(entries));
}

/**
 * KVM if it really boots a guest here, else software emulation (TCG). /dev/kvm
 * can exist and still fail (seen: MSR errors, or a guest that never prints),
 * so the probe boots one guest for real; the answer is kept in the assets
 * folder so the probe runs once per machine.
 */
export async function guestAccel(initramfs: string, assets = GUEST_ASSETS): Promise<'kvm' | 'tcg'> {
  const cache = join(assets, 'accel');
  if (existsSync(cache)) return readFileSync(cache, 'utf8').trim() === 'kvm' ? 'kvm' : 'tcg';
  let accel: 'kvm' | 'tcg' = 'tcg';
  if (existsSync('/dev/kvm')) {
    const probe = new Guest({ name: 'probe', tap: 'twg-probe', mac: '02:81:00:00:00:ff', ip: '10.81.255.1/24' }, initramfs, 'kvm', assets);
    try {
      await probe.ready(15_000);
      accel = 'kvm';
    } catch { /* stays tcg */ }
    await probe.stop();
  }
  writeFileSync(cache, `${accel}\n`);
  return accel;
}

export interface GuestSpec {
  name: string;
  /** TAP interface QEMU creates for the NIC (tw..., at most 15 characters). */
  tap: string;
  mac: string;
  /** Address with prefix length, e.g. 10.81.0.11/24. */
  ip: string;
}

export class Guest {
  readonly proc: ChildProcess;
  private out = '';
  private seq = 0;
  private waiters: Array<() => void> = [];

  constructor(readonly spec: GuestSpec, initramfs: string, readonly accel: 'kvm' | 'tcg' = 'tcg', assets = GUEST_ASSETS) {
    if (!spec.tap.startsWith('tw') || spec.tap.length > 15) throw new Error(`guest TAPs are named tw..., at most 15 characters: ${spec.tap}`);
    // Offloads off on the virtio NIC: whole, checksummed frames on the TAP (tapwall's --offload is not needed then).
    const nic = ['virtio-net-pci', 'netdev=n0', `mac=${spec.mac}`, 'csum=off', 'gso=off', 'guest_csum=off', 'guest_tso4=off', 'guest_tso6=off',
      'guest_ecn=off', 'guest_ufo=off', 'host_tso4=off', 'host_tso6=off', 'host_ecn=off', 'host_ufo=off', 'mrg_rxbuf=off'].join(',');
    this.proc = spawn('qemu-system-x86_64', [
      '-machine', 'q35', '-accel', accel, ...(accel === 'kvm' ? ['-cpu', 'host'] : []), '-m', '192', '-smp', '1',
      '-kernel', join(assets, 'vmlinuz'), '-initrd', initramfs,
      '-append', `console=ttyS0 quiet panic=-1 tw.ip=${spec.ip} tw.name=${spec.name}`,
      '-netdev', `tap,id=n0,ifname=${spec.tap},script=no,downscript=no,vnet_hdr=off`, '-device', nic,
      '-display', 'none', '-vga', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot', '-nodefaults',
    ], { stdio: ['pipe', 'pipe', 'pipe'] });
    const take = (d: Buffer) => {
      this.out += d.toString('latin1');
      for (const w of this.waiters.splice(0)) w();
    };
    this.proc.stdout!.on('data', take);
    this.proc.stderr!.on('data', take);
    this.proc.on('exit', () => { for (const w of this.waiters.splice(0)) w(); });
  }

  /** Everything the console printed so far. */
  get console(): string {
    return this.out;
  }

  private async waitFor(re: RegExp, from: number, timeoutMs: number): Promise<RegExpExecArray> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.out.slice(from));
      if (m) return m;
      if (this.exited) throw new Error(`guest ${this.spec.name} exited; console:\n${this.out.slice(-2000)}`);
      const left = end - Date.now();
      if (left <= 0) throw new Error(`guest ${this.spec.name}: no ${re} within ${timeoutMs} ms; console:\n${this.out.slice(-2000)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 500));
        this.waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }

  ready(timeoutMs = 120_000): Promise<unknown> {
    return this.waitFor(/TW-READY/, 0, timeoutMs);
  }

  /** Run one shell command line in the guest; its exit status and what it printed. */
  async run(cmd: string, timeoutMs = 20_000): Promise<{ code: number; output: string }> {
    const id = ++this.seq;
    const from = this.out.length;
    const line = cmd.trim().endsWith('&') ? `${cmd} echo "TW-RC-$?-${id}"` : `${cmd}; echo "TW-RC-$?-${id}"`;
    this.proc.stdin!.write(`${line}\n`);
    const m = await this.waitFor(new RegExp(`TW-RC-(\\d+)-${id}\\b`), from, timeoutMs);
    const output = this.out.slice(from, from + m.index).replace(/\r/g, '').trim();
    return { code: Number(m[1]), output };
  }

  /** The QEMU process has ended (by itself or by a signal). */
  get exited(): boolean {
    return this.proc.exitCode !== null || this.proc.signalCode !== null;
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGKILL');
    await exited;
  }
}
