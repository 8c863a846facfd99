/**
 * Port backends: how tapwall reaches a vNIC or an uplink. Each backend gives
 * a non-blocking descriptor and the addon's batch calls for it:
 *   tap     tapwall opens the TAP device itself (TUNSETIFF, IFF_TAP|IFF_NO_PI);
 *           the kernel side of the TAP is the workload's NIC.
 *   attach  an AF_PACKET socket on an interface another program owns (the host
 *           side of a QEMU guest's TAP, a veth).
 */
import { native, NATIVE_LAYOUT, TAP_PERSIST } from './native.js';

export type PortMode = 'tap' | 'attach';

export interface PortIo {
  readonly name: string;
  readonly mode: PortMode;
  readonly kind: number;
  readonly fd: number;
}

export function portOpen(name: string, mode: PortMode, opts: { persist?: boolean } = {}): PortIo {
  const n = native();
  if (mode === 'tap') {
    const [fd, actual] = n.tapOpen(name, opts.persist ? TAP_PERSIST : 0);
    return { name: actual, mode, kind: NATIVE_LAYOUT.kindTap, fd };
  }
  return { name, mode, kind: NATIVE_LAYOUT.kindPacket, fd: n.packetOpen(name) };
}

export function portClose(p: PortIo): void {
  native().closeFd(p.fd);
}
