/**
 * The store: where the policy document and the dynamic tags live, behind one
 * interface so that many hosts can later share them through etcd.
 *
 * Model (shaped after etcd's, so an etcd implementation maps one to one)
 *   Two keys: `policy` (the document text, YAML or JSON) and `tags` (tags
 *   added at run time, per workload, each with who, why and when it expires).
 *   `revision` is store-wide and grows by one with every change, like etcd's
 *   cluster revision; each key remembers the revision of its last change
 *   (etcd's mod_revision). Writers pass the revision they read: a write whose
 *   key changed since is refused (compare-and-set), so two writers cannot
 *   silently lose each other's change. `watch` reports every change, made
 *   through this store or from outside (an edited file, another host).
 *   Everything is asynchronous because a networked store is.
 *
 * FileStore (this host only)
 *   policy: the --config file. A write goes to a temporary file renamed over
 *   it (readers never see half a file). The file is watched: an edit by hand
 *   or by configuration management becomes a change like any other.
 *   tags: a JSON file (by default beside the config, `<config>.tags.json`), so
 *   a quarantine survives a restart, replaced whole on every change through a
 *   swap file beside it (SwapWriter). Revisions restart at 1 with the process.
 */
import { chmodSync, chownSync, closeSync, constants as fsConstants, existsSync, fchmodSync, fchownSync, fstatSync, ftruncateSync, openSync, readFileSync, renameSync, rmSync, statSync, watch, writeFileSync, writeSync, type FSWatcher } from 'node:fs';
import { rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { KeyIndex } from './prepare.js';
import { nativeIfBuilt } from '../io/native.js';
import { readTextSliced, writeTextSliced } from '../util/sliced.js';

export interface DynamicTag {
  tag: string;
  reason: string;
  by: string;
  /** ISO time it was added. */
  added: string;
  /** Epoch milliseconds it expires at, or null for never. */
  expiresAt: number | null;
}

/** Dynamic tags by workload name. */
export type TagMap = Record<string, DynamicTag[]>;

/**
 * A workload's dynamic tags, read as an own property only: a workload may be
 * called `constructor` or `toString`, which a plain object would answer with
 * Object.prototype's members.
 */
export function tagsOf(tags: TagMap, workload: string): DynamicTag[] | undefined {
  return Object.hasOwn(tags, workload) ? tags[workload] : undefined;
}

export interface StoreState {
  revision: number;
  policy: {
    text: string;
    source: string;
    revision: number;
    /** The text is the JSON of a document the store assembled from keys: validated as data, problems named by key. */
    assembled?: boolean;
    /** That document, as data (for reading; the text is what is validated). */
    data?: unknown;
    /** Keys the store could not turn into any part of the document (bad JSON, unknown keys): refused like a bad document. */
    keyProblems?: Array<{ key: string; message: string }>;
    /** Where each section and rule came from (prepare.ts: keyOfPathIn), for messages. */
    keyIndex?: KeyIndex;
  };
  tags: { value: TagMap; revision: number };
}

export type StoreKey = 'policy' | 'tags';
export type CasResult = { ok: true; revision: number } | { ok: false; revision: number };

export interface PolicyStore {
  read(): Promise<StoreState>;
  /** Write the policy text if its revision is still `expect` (null: whatever it is). */
  putPolicy(text: string, expect: number | null): Promise<CasResult>;
  /** Write the tag map if its revision is still `expect` (null: whatever it is). */
  putTags(tags: TagMap, expect: number | null): Promise<CasResult>;
  /** Look at the backing store now (SIGHUP): a change found there is reported through watch like any other. */
  refresh(): Promise<void>;
  /** Call `listener` after every change, with the key that changed; returns a function that stops watching. */
  watch(listener: (key: StoreKey, state: StoreState) => void): () => void;
  close(): void;
}


/**
 * Replace `target` with `text` through `tmp` and a rename (readers never see
 * half a file), keeping the target's mode and owner (a PUT by a root daemon
 * must not leave the operator's 0644 file root-owned 0600). On any failure the
 * temporary file is removed and the target is untouched; the error is thrown.
 *
 * `write` puts the text in the temporary file: a policy a slice per turn (a
 * data center's is megabytes; util/sliced.ts), the small tags file at once.
 * The rename runs on libuv's thread pool, not on the forwarding thread: it
 * frees the replaced file, and a 9.7 MB policy's rename over the one before
 * took 6-11 ms on this machine's ext4 (1-2 ms at 2 MB).
 */
async function writeKeepingOwner(tmp: string, text: string, target: string, write: (path: string, text: string, mode: number) => unknown): Promise<void> {
  let mode = 0o600, uid = -1, gid = -1;
  try {
    const st = statSync(target);
    mode = st.mode & 0o7777; uid = st.uid; gid = st.gid;
  } catch {
    // A new file: 0600, owned by whoever runs tapwall.
  }
  try {
    await write(tmp, text, mode);
    chmodSync(tmp, mode); // the mode a file is made with is masked by the umask
    if (uid >= 0 && (uid !== process.getuid?.() || gid !== process.getgid?.())) {
      try { chownSync(tmp, uid, gid); } catch { /* not allowed (tapwall is not root): the mode at least is kept */ }
    }
    await rename(tmp, target);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * A small file replaced whole, the way a tag change needs it on its path to
 * being enforced: the text is written into an empty swap file kept beside
 * the target (`.<name>.swap`), and the two trade places in one step
 * (renameExchange, the addon's renameat2). Readers never see half a file, as
 * with a rename; but no inode is made or freed while the change waits: on
 * this machine's ext4 a new file and a rename took 0.6-1 ms, about a third
 * of a tag change, an exchange 0.07-0.2 ms. The old text, now in the swap
 * file, is cut to nothing after the change is done (freeing its blocks is
 * the costly part), so the next write needs room of its own like a new
 * file's: a full disk refuses it just the same.
 *
 * Mode and owner follow the target's (the swap file was the target before the
 * last exchange; one made afresh or changed since is set like
 * writeKeepingOwner's). Where the exchange is refused (a file system without
 * it, the addon not built) or the target does not exist yet, it writes the
 * way writeKeepingOwner does. On a failure the swap file is removed and the
 * target is untouched; the error is thrown.
 */
export class SwapWriter {
  readonly swapPath: string;
  private exchanges = nativeIfBuilt()?.renameExchange !== undefined;
  private emptyLater: NodeJS.Timeout | null = null;

  constructor(readonly target: string) {
    this.swapPath = join(dirname(target), `.${basename(target)}.swap`);
  }

  /** Replace the target's text with `text`; rejects (target untouched) when it cannot. Synchronous up to an exchange. */
  async write(text: string): Promise<void> {
    let st: ReturnType<typeof statSync> | null = null;
    try { st = statSync(this.target); } catch { /* no target yet */ }
    if (st === null || !this.exchanges) {
      await writeKeepingOwner(`${this.target}.${process.pid}.tmp`, text, this.target, (path, t, mode) => writeFileSync(path, t, { mode }));
      return;
    }
    const mode = Number(st.mode) & 0o7777, uid = Number(st.uid), gid = Number(st.gid);
    try {
      // Not through a link, and never waiting on a FIFO someone left at that name (O_NONBLOCK).
      const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK;
      let fd = -1;
      try {
        fd = openSync(this.swapPath, flags, mode);
      } catch (e) {
        // A symbolic link (ELOOP) or a FIFO with no reader (ENXIO) at that name: replaced below.
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ELOOP' && code !== 'ENXIO') throw e;
      }
      try {
        let sw = fd >= 0 ? fstatSync(fd) : null;
        if (sw === null || !sw.isFile() || sw.nlink !== 1) {
          // Not a file this writer made (another name for it elsewhere, or not a file): not to be written into.
          if (fd >= 0) closeSync(fd);
          fd = -1;
          rmSync(this.swapPath, { force: true });
          fd = openSync(this.swapPath, flags | fsConstants.O_EXCL, mode);
          sw = fstatSync(fd);
        }
        if (sw.size > 0) ftruncateSync(fd, 0); // not emptied after the last change (the process stopped, or two changes in one turn)
        if ((sw.mode & 0o7777) !== mode) fchmodSync(fd, mode);
        if (sw.uid !== uid || sw.gid !== gid) {
          try { fchownSync(fd, uid, gid); } catch { /* not allowed (tapwall is not root): the mode at least is kept */ }
        }
        const bytes = Buffer.from(text);
        for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off, bytes.length - off, off);
      } finally {
        if (fd >= 0) closeSync(fd);
      }
      const r = nativeIfBuilt()!.renameExchange(this.swapPath, this.target);
      if (r === -22 || r === -38 || r === -95) { // EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot exchange
        this.exchanges = false;
        renameSync(this.swapPath, this.target);
        return;
      }
      if (r < 0) throw Object.assign(new Error(`renameat2(${this.swapPath}, ${this.target}, RENAME_EXCHANGE): errno ${-r}`), { errno: -r });
    } catch (e) {
      try { rmSync(this.swapPath, { force: true }); } catch { /* a read-only folder: the error below says so */ }
      throw e;
    }
    // Soon, not at once: the change's audit record and its swap into the data plane come first. By path:
    // whatever sits there then is a swap file (writes are whole in one turn), never the target.
    if (this.emptyLater !== null) clearTimeout(this.emptyLater);
    this.emptyLater = setTimeout(() => {
      this.emptyLater = null;
      let fd = -1;
      try {
        fd = openSync(this.swapPath, fsConstants.O_WRONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
        const sw = fstatSync(fd);
        if (sw.isFile() && sw.nlink === 1) ftruncateSync(fd, 0);
      } catch {
        // Gone, or not writable now: the next write cuts it.
      } finally {
        if (fd >= 0) closeSync(fd);
      }
    }, 20);
    this.emptyLater.unref();
  }
}

/** Which file a path held when we looked: the same inode, size and time is the same file. */
interface FileSeen { ino: number; size: number; mtimeMs: number }

function seen(path: string): FileSeen | null {
  try {
    const st = statSync(path);
    return { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
  } catch {
    return null;
  }
}

export class FileStore implements PolicyStore {
  private revision = 1;
  private policyText: string;
  private policyRevision = 1;
  private tags: TagMap = {};
  private tagsRevision = 1;
  private readonly listeners = new Set<(key: StoreKey, state: StoreState) => void>();
  private watcher: FSWatcher | null = null;
  private debounce: NodeJS.Timeout | null = null;
  private readonly tagsFile: SwapWriter;

  constructor(readonly configPath: string, readonly tagsPath: string = `${configPath}.tags.json`) {
    this.tagsFile = new SwapWriter(tagsPath);
    this.policyText = readFileSync(configPath, 'utf8');
    if (existsSync(tagsPath)) {
      try {
        this.tags = JSON.parse(readFileSync(tagsPath, 'utf8')) as TagMap;
      } catch (e) {
        throw Object.assign(new Error(`cannot read the tags file ${tagsPath}: ${(e as Error).message}`), { code: 'ETAGSFILE' });
      }
    }
  }

  private snapshot(): StoreState {
    return {
      revision: this.revision,
      policy: { text: this.policyText, source: this.configPath, revision: this.policyRevision },
      tags: { value: structuredClone(this.tags), revision: this.tagsRevision },
    };
  }

  private changed(key: StoreKey): void {
    const state = this.snapshot();
    for (const l of this.listeners) l(key, state);
  }

  async read(): Promise<StoreState> {
    return this.snapshot();
  }

  putPolicy(text: string, expect: number | null): Promise<CasResult> {
    if (expect !== null && expect !== this.policyRevision) return Promise.resolve({ ok: false, revision: this.policyRevision });
    return (this.policyWrite = this.writePolicy(text));
  }

  /** The write of the config file under way (reread waits for it: its rename may land before its end is seen). */
  private policyWrite: Promise<CasResult> | null = null;

  private async writePolicy(text: string): Promise<CasResult> {
    const tmp = join(dirname(this.configPath), `.${basename(this.configPath)}.${process.pid}.tmp`);
    try {
      await writeKeepingOwner(tmp, text, this.configPath, writeTextSliced);
      // The watch sees this write too: the file as written is not read back (10 MB read, decoded and compared).
      this.written = seen(this.configPath);
      this.policyText = text;
      this.policyRevision = ++this.revision;
    } finally {
      this.policyWrite = null;
    }
    this.changed('policy');
    return { ok: true, revision: this.policyRevision };
  }

  async putTags(tags: TagMap, expect: number | null): Promise<CasResult> {
    if (expect !== null && expect !== this.tagsRevision) return { ok: false, revision: this.tagsRevision };
    await this.tagsFile.write(`${JSON.stringify(tags, null, 2)}\n`);
    this.tags = structuredClone(tags);
    this.tagsRevision = ++this.revision;
    this.changed('tags');
    return { ok: true, revision: this.tagsRevision };
  }

  watch(listener: (key: StoreKey, state: StoreState) => void): () => void {
    this.listeners.add(listener);
    if (!this.watcher) {
      // The directory, not the file: editors and `mv` replace the file, which ends a watch on it.
      this.watcher = watch(dirname(this.configPath), (_event, name) => {
        if (name !== null && name !== basename(this.configPath)) return;
        if (this.debounce) clearTimeout(this.debounce);
        this.debounce = setTimeout(() => { void this.reread(); }, 50);
      });
    }
    return () => { this.listeners.delete(listener); };
  }

  /** The config file as this store last wrote it (null: not since start). */
  private written: FileSeen | null = null;

  /**
   * The config file may have changed on disk: a different text is a new
   * revision. The file this store wrote itself is not read again; another
   * is read and decoded a slice per turn.
   */
  private async reread(force = false): Promise<void> {
    // Which file is this store's own is known once its write has ended.
    while (this.policyWrite !== null) await this.policyWrite.catch(() => undefined);
    const now = seen(this.configPath);
    if (now === null) return; // between an unlink and a rename; the rename fires again
    const w = this.written;
    if (!force && w !== null && now.ino === w.ino && now.size === w.size && now.mtimeMs === w.mtimeMs) return;
    let text: string;
    try {
      text = await readTextSliced(this.configPath);
    } catch {
      return;
    }
    if (text === this.policyText) return;
    this.policyText = text;
    this.policyRevision = ++this.revision;
    this.changed('policy');
  }

  /** Re-read the config file now (SIGHUP), whether or not the watch saw a change. */
  async refresh(): Promise<void> {
    await this.reread(true);
  }

  close(): void {
    this.watcher?.close();
    this.watcher = null;
    if (this.debounce) clearTimeout(this.debounce);
    this.listeners.clear();
  }
}

/** A store in memory only: for benchmarks and tests of the controller, and the simplest reading of the contract. */
export class MemoryStore implements PolicyStore {
  private revision = 1;
  private policyRevision = 1;
  private tags: TagMap = {};
  private tagsRevision = 1;
  private readonly listeners = new Set<(key: StoreKey, state: StoreState) => void>();

  constructor(private policyText: string, private readonly source = '(memory)') {}

  private snapshot(): StoreState {
    return {
      revision: this.revision,
      policy: { text: this.policyText, source: this.source, revision: this.policyRevision },
      tags: { value: structuredClone(this.tags), revision: this.tagsRevision },
    };
  }

  async read(): Promise<StoreState> {
    return this.snapshot();
  }

  async putPolicy(text: string, expect: number | null): Promise<CasResult> {
    if (expect !== null && expect !== this.policyRevision) return { ok: false, revision: this.policyRevision };
    this.policyText = text;
    this.policyRevision = ++this.revision;
    for (const l of this.listeners) l('policy', this.snapshot());
    return { ok: true, revision: this.policyRevision };
  }

  async putTags(tags: TagMap, expect: number | null): Promise<CasResult> {
    if (expect !== null && expect !== this.tagsRevision) return { ok: false, revision: this.tagsRevision };
    this.tags = structuredClone(tags);
    this.tagsRevision = ++this.revision;
    for (const l of this.listeners) l('tags', this.snapshot());
    return { ok: true, revision: this.tagsRevision };
  }

  /** Nothing backs it: what it holds is always current. */
  async refresh(): Promise<void> {}

  watch(listener: (key: StoreKey, state: StoreState) => void): () => void {
    this.listeners.add(listener);
    return () => { this.listeners.delete(listener); };
  }

  close(): void {
    this.listeners.clear();
  }
}
