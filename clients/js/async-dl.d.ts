// Types of async-dl.js (the browser client of the /v1/download/ API).

export type JobStatus = 'queued' | 'processing' | 'paused' | 'completed' | 'failed' | 'canceled';
export type FileStatus = 'pending' | 'downloading' | 'paused' | 'completed' | 'failed' | 'canceled';

export interface FileError {
  code: 'TIMEOUT' | 'DOWNLOAD_FAILED' | 'HTTP_STATUS' | 'TOO_LARGE' | 'BLOCKED_ADDRESS'
      | 'STORAGE_FAILED' | 'CANCELED' | 'WORKER_LOST' | string;
  message: string;
}

export interface JobFile {
  index: number;
  fileId: number | null;
  url: string;
  name: string | null;
  status: FileStatus;
  /** bytes of the file, once known */
  size: number | null;
  contentType: string | null;
  sha256: string | null;
  attempts: number;
  waiting: 'retry' | 'host_paused' | 'host_limit' | 'owner_limit' | 'queue' | null;
  error: FileError | null;
  downloadUrl: string | null;
}

export interface Bundle {
  status: 'pending' | 'building' | 'completed' | 'failed';
  files: number | null;
  size: number | null;
  sha256: string | null;
  downloadUrl: string | null;
  error: string | null;
  completedAt: string | null;
}

/** GET {p}status/{id} */
export interface Job {
  jobId: string;
  status: JobStatus | 'deleted';
  progress: number;
  totalFiles: number;
  completedFiles: number;
  failedFiles: number;
  bytesDone: number;
  bytesTotal: number | null;
  downloadUrl: string | null;
  error: FileError | null;
  createdAt: string;
  updatedAt: string;
  startedAt: string | null;
  completedAt: string | null;
  expiresAt: string | null;
  /** when the job was paused; null when it is not */
  pausedAt?: string | null;
  bundle: Bundle | null;
  files: JobFile[];
}

export interface UpdateFile extends JobFile {
  /** bytes downloaded, where the documents say it exactly (the API counts
   *  bytes per job): a stored file's size, 0 while pending, the job's bytes
   *  less the stored files' for the only file still running; else null */
  bytesDone: number | null;
}

/** What follow() hands onUpdate: the job as it is now, and how it came. */
export interface Update extends Job {
  files: UpdateFile[];
  /** the stream's event (connected, progress, paused, resumed, file,
   *  completed, failed, canceled, deleted), or 'status' for a polled
   *  document */
  event: string;
  transport: 'eventsource' | 'poll';
  /** the last update: status completed, failed, canceled or deleted */
  final: boolean;
  /** bytes a second over the last few seconds, null when not known */
  speed: number | null;
}

export interface Options {
  /** the API's prefix, default '/v1/download/' */
  base?: string;
  /** sent with every fetch (EventSource cannot send headers: cookies only) */
  headers?: Record<string, string>;
  /** fetch's credentials, default 'same-origin' */
  credentials?: 'omit' | 'same-origin' | 'include';
  /** EventSource's withCredentials (a stream on another origin), default false */
  withCredentials?: boolean;
  /** 'auto' (EventSource, else polling; default) or 'poll' */
  transport?: 'auto' | 'poll';
  /** ms between polls while the job changes, default 1000 */
  pollInterval?: number;
  /** the longest wait between polls (backoff while nothing changes or on errors), default 10000 */
  maxPollInterval?: number;
  /** ms a stream may stay without its first event before the client polls (a buffering proxy), default 5000 */
  blockedTimeout?: number;
  /** ms an open stream may stay silent (heartbeats included) before a reconnect, default 45000 */
  idleTimeout?: number;
  /** stream errors in a row before the client polls, default 3 */
  maxStreamFailures?: number;
  /** ms of polls that went well before a stream that failed, or was refused
   * with a 5xx, is tried again (doubling with each return), default 30000 */
  streamRetryAfter?: number;
  /** aborts the requests; stops a follow (done resolves to null) and a
   * download waiting for its job (rejects with ABORTED) */
  signal?: AbortSignal;
  /** replaces fetch (tests, or an authenticated fetch) */
  fetch?: typeof fetch;
  /** replaces EventSource; null: never use one */
  EventSource?: typeof EventSource | null;
}

export interface InitiateOptions extends Options {
  /** "90s", "5m" or seconds */
  timeout?: string | number;
  priority?: number;
  callbackUrl?: string;
  idempotencyKey?: string;
}

export interface Initiated {
  jobId: string;
  status: JobStatus;
  totalFiles: number;
  statusUrl: string;
  streamUrl: string;
  downloadUrl: string;
  createdAt: string;
}

export interface FollowOptions extends Options {
  /** resume after this event id (?lastEventId=) */
  lastEventId?: string | number;
}

export interface Following {
  /** closes the stream, stops polling; done resolves to null */
  stop(): void;
  /** the final update, or null after stop() (or options.signal's abort);
   * rejects with AsyncDLError for a job that cannot be followed, or
   * BAD_RESPONSE after three 200s in a row without a JSON document */
  done: Promise<Update | null>;
  /** 'eventsource' or 'poll' (null before the first attempt) */
  readonly transport: 'eventsource' | 'poll' | null;
  /** why the client polls: 'no-eventsource', 'blocked', 'refused', 'failing',
   * 'asked'; null while on the stream (again) */
  readonly reason: string | null;
}

export interface DownloadOptions extends Options {
  /** one file of the job instead of its zip (or its only file) */
  index?: number;
  /** wait for the job to end first (default true) */
  wait?: boolean;
  /** what to do with the link; default location.assign; null: nothing.
   * A link that is not http: or https: is refused first (UNSAFE_LINK). */
  navigate?: ((url: string, link: Link) => void) | null;
}

export interface Link { index?: number; name: string; size: number | null; url: string }
export interface Links { jobId: string; expiresAt: string; files: Link[]; bundle: Link | null }

export interface JobSummary {
  jobId: string; status: JobStatus; progress: number; totalFiles: number;
  completedFiles: number; failedFiles: number; createdAt: string; updatedAt: string;
}
export interface JobList {
  jobs: JobSummary[]; limit: number; offset: number; total: number; nextCursor: string | null;
}
export interface ListOptions extends Options {
  limit?: number; offset?: number; status?: JobStatus; cursor?: string;
}

export declare class AsyncDLError extends Error {
  /** HTTP status (0: no answer) */
  status: number;
  /** the API's error code (JOB_NOT_FOUND, NOT_READY...), NETWORK_ERROR, or HTTP_<status> */
  code: string;
  body: unknown;
  /** seconds, from Retry-After */
  retryAfter: number | null;
}

export declare const FINAL_STATUSES: readonly string[];
export declare const DEFAULTS: Readonly<Required<Omit<Options, 'fetch' | 'EventSource'>>>;

export declare function initiateBody(
  files: number | string | { url: string; name?: string } | Array<number | string | { url: string; name?: string }>,
  options?: InitiateOptions): Record<string, unknown>;
/** numbers are file ids, strings or {url, name} are URLs */
export declare function initiate(
  files: number | string | { url: string; name?: string } | Array<number | string | { url: string; name?: string }>,
  options?: InitiateOptions): Promise<Initiated>;
export declare function follow(jobId: string, onUpdate: ((u: Update) => void) | null,
                               options?: FollowOptions): Following;
export declare function status(jobId: string, options?: Options): Promise<Job>;
export declare function cancel(jobId: string, options?: Options): Promise<Job>;
export declare function pause(jobId: string, options?: Options): Promise<Job>;
export declare function resume(jobId: string, options?: Options): Promise<Job>;
export declare function remove(jobId: string, options?: Options): Promise<void>;
export declare function links(jobId: string, options?: Options): Promise<Links>;
export declare function download(jobId: string, options?: DownloadOptions): Promise<Link>;
export declare function list(options?: ListOptions): Promise<JobList>;

export interface Client {
  options: Options;
  initiate: typeof initiate;
  status: typeof status;
  cancel: typeof cancel;
  pause: typeof pause;
  resume: typeof resume;
  remove: typeof remove;
  links: typeof links;
  download: typeof download;
  list: typeof list;
  follow: typeof follow;
}
export declare function createClient(options?: Options): Client;
