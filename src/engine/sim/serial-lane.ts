/**
 * Runs async tasks one at a time in arrival order, the way one GPU runs one batch at a time. A
 * task whose signal aborts while it waits is rejected at once and never starts; once started,
 * the task itself watches the signal.
 */
export class SerialLane {
  private tail: Promise<void> = Promise.resolve();

  /** Queues `task`; resolves or rejects with its result. */
  run<T>(task: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<T>((resolve, reject) => {
      let abandoned = false;
      const onAbort = (): void => {
        abandoned = true;
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.tail = this.tail.then(async () => {
        signal?.removeEventListener('abort', onAbort);
        if (abandoned) return;
        try {
          resolve(await task());
        } catch (error) {
          reject(error);
        }
      });
    });
  }
}
