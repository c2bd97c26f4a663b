import type { Options, InitiateOptions, Initiated, Update, Link, Job } from './async-dl.js';

export interface UseDownloadOptions extends Options {
  /** a job to follow (e.g. kept in the URL across reloads); a new value
   * is followed instead */
  jobId?: string;
}

export interface UseDownload {
  jobId: string | null;
  /** the last update of the followed job (null before the first) */
  job: Update | null;
  /** the last failure of a call, or of following the job */
  error: Error | null;
  start(files: Array<number | string | { url: string; name?: string }>,
        options?: InitiateOptions): Promise<Initiated>;
  follow(jobId: string): void;
  cancel(): Promise<Job | undefined>;
  remove(): Promise<void>;
  /** the zip (or the only file), or file `index`, once ready; a wait
   * for a running job ends at unmount (resolves undefined) */
  download(index?: number): Promise<Link | undefined>;
}

export declare function useDownload(options?: UseDownloadOptions): UseDownload;
