/**
 * Connections that outlive the daemon: the flow table's entries kept in a
 * shared file mapping, picked up by the next process.
 *
 * Why
 *   A restart (an upgrade, a crash, kill -9) used to forget every
 *   connection: in strict mode the next segment of an established TCP
 *   connection has no entry and is dropped as `invalid_state`, so open
 *   connections hung until they timed out. Cilium pins its conntrack maps in
 *   bpffs for the same reason. Here the entries array of the flow table is a
 *   MAP_SHARED mapping of a file: every store the packet path makes is in
 *   the file at once, with no copy, no timer and no work on the packet path,
 *   and it stays there however the process ends (the kernel keeps the
 *   mapped pages). The next process reads the file, maps a new one, and
 *   inserts the old connections again for the ports that have the same
 *   interface names (Dataplane.resumeFlows).
 *
 * Layout of the file (little-endian int32 words)
 *   0   magic 'TWFS'        4   version (1)      8  ENTRY_WORDS
 *   12  capacity (entries)  16  maxPorts         20 pid of the writer
 *   24  byte offset of the entries
 *   64  port names: maxPorts x 16 bytes (IFNAMSIZ), NUL padded; the
 *       interface of each port slot, empty for none. Rewritten on the
 *       control path whenever ports come or go, so an entry's port numbers
 *       always resolve to names in the same file.
 *   entries: capacity x ENTRY_WORDS words, the FlowTable layout.
 *
 * What a reader trusts, and what it does not
 *   Nothing in the file is trusted as a verdict: resumed entries carry no
 *   policy generation, so their next packet is decided again by the policy
 *   in force (as after any policy change); only their connection state
 *   (and counters) carries over. An entry torn by a kill in the middle of
 *   an insert is at worst a connection the policy is asked about again. A
 *   file of another layout or version, or cut short, is set aside with a
 *   problem, never half read. The hash index, free stack and owner lists
 *   are rebuilt by inserting, so no structure of the old process is reused.
 *
 * The disk
 *   The file's blocks are reserved (posix_fallocate) before it is mapped: a
 *   store into an unreserved page of a full file system would kill the
 *   process with SIGBUS. If they cannot be reserved, or the folder is
 *   read-only, the table lives in ordinary memory and the problem is
 *   reported: the data plane never depends on the disk. Put the file on a
 *   tmpfs (/run) where possible: a mapped file on disk is written back by
 *   the kernel every half minute or so, which costs I/O and buys nothing
 *   (connections do not outlive a reboot).
 */
import { existsSync, readFileSync, renameSync, unlinkSync } from 'node:fs';
import { native } from '../io/native.js';
import { ENTRY_WORDS } from './flowTable.js';

const MAGIC = 0x53465754; // 'TWFS' little-endian
const VERSION = 1;
const HEADER_BYTES = 64;
const NAME_BYTES = 16;

/** Where the entries start in a file for this many port slots. */
function entriesOffset(maxPorts: number): number {
  return Math.ceil((HEADER_BYTES + maxPorts * NAME_BYTES) / 64) * 64;
}

/** What the previous process left: its entries and the interface name of each of its port slots. */
export interface PreviousFlows {
  capacity: number;
  entries: Int32Array;
  ports: string[];
  pid: number;
}

/** The mapped file this process writes its flow table into. */
export class FlowStateFile {
  readonly entries: Int32Array;
  private readonly names: Uint8Array;

  constructor(readonly path: string, buffer: ArrayBuffer, capacity: number, readonly maxPorts: number) {
    const header = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    const offset = entriesOffset(maxPorts);
    header[0] = MAGIC; header[1] = VERSION; header[2] = ENTRY_WORDS; header[3] = capacity; header[4] = maxPorts;
    header[5] = process.pid; header[6] = offset;
    this.names = new Uint8Array(buffer, HEADER_BYTES, maxPorts * NAME_BYTES);
    this.entries = new Int32Array(buffer, offset, capacity * ENTRY_WORDS);
  }

  /** Record the interface behind each port slot ('' for none); control path. */
  setPorts(names: readonly string[]): void {
    const out = this.names;
    out.fill(0);
    const enc = new TextEncoder();
    for (let i = 0; i < names.length && i < this.maxPorts; i++) {
      out.set(enc.encode(names[i]).subarray(0, NAME_BYTES - 1), i * NAME_BYTES);
    }
  }
}

/** The previous process's flows in a file's bytes, or why they cannot be read. */
export function flowStateRead(bytes: Uint8Array): PreviousFlows | string {
  if (bytes.length < HEADER_BYTES) return `${bytes.length} bytes: shorter than a header`;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const word = (i: number) => dv.getInt32(i * 4, true);
  if (word(0) !== MAGIC) return 'not a tapwall flow state file';
  if (word(1) !== VERSION || word(2) !== ENTRY_WORDS) return `layout version ${word(1)} with ${word(2)} words per entry: this tapwall reads version ${VERSION} with ${ENTRY_WORDS}`;
  const capacity = word(3), maxPorts = word(4), offset = word(6);
  if (!(capacity >= 1 && capacity <= 1 << 26) || !(maxPorts >= 1 && maxPorts < 0xffff) || offset !== entriesOffset(maxPorts)) return 'a header that does not add up';
  const size = offset + capacity * ENTRY_WORDS * 4;
  if (bytes.length !== size) return `${bytes.length} bytes where its header says ${size}: cut short or grown`;
  const dec = new TextDecoder();
  const ports: string[] = [];
  for (let i = 0; i < maxPorts; i++) {
    const name = bytes.subarray(HEADER_BYTES + i * NAME_BYTES, HEADER_BYTES + (i + 1) * NAME_BYTES);
    const end = name.indexOf(0);
    ports.push(dec.decode(name.subarray(0, end < 0 ? NAME_BYTES : end)));
  }
  // A view where the bytes are aligned (a file read whole is), else a copy.
  const at = bytes.byteOffset + offset;
  let entries: Int32Array;
  if (at % 4 === 0) entries = new Int32Array(bytes.buffer, at, capacity * ENTRY_WORDS);
  else {
    entries = new Int32Array(capacity * ENTRY_WORDS);
    new Uint8Array(entries.buffer).set(bytes.subarray(offset, size));
  }
  return { capacity, entries, ports, pid: word(5) };
}

/**
 * Read what a previous process left at `path`, then map a new file there
 * for this one (written beside it and renamed over it). Either part may
 * fail on its own; each failure is a problem in the answer, never an
 * exception: without a file the table simply lives in memory.
 */
export function flowStateOpen(path: string, capacity: number, maxPorts: number): { file: FlowStateFile | null; previous: PreviousFlows | null; problems: string[] } {
  const problems: string[] = [];
  let previous: PreviousFlows | null = null;
  if (existsSync(path)) {
    try {
      const read = flowStateRead(readFileSync(path));
      if (typeof read === 'string') problems.push(`${path}: ${read}; the connections in it are not resumed`);
      else previous = read;
    } catch (e) {
      problems.push(`${path}: cannot read it (${(e as Error).message}); the connections in it are not resumed`);
    }
  }
  const bytes = entriesOffset(maxPorts) + capacity * ENTRY_WORDS * 4;
  const fresh = `${path}.new`;
  let file: FlowStateFile | null = null;
  try {
    const buffer = native().mapFile(fresh, bytes);
    file = new FlowStateFile(path, buffer, capacity, maxPorts);
    renameSync(fresh, path);
  } catch (e) {
    file = null;
    try { unlinkSync(fresh); } catch { /* never made */ }
    problems.push(`${path}: cannot keep the flow table in it (${(e as Error).message}); connections are kept in memory and will not survive a restart`);
    // What is there now would be resumed by a later start, long after its connections ended.
    try { unlinkSync(path); } catch { /* none, or a read-only folder */ }
  }
  return { file, previous, problems };
}
