import { ErrorCode, TandemError } from '../errors.js';
import type { Clock } from '../time/clock.js';
import type { TandemMetrics } from './tandem-metrics.js';

/** The events of a generation, as the frontend's generate() yields them. */
type Event = { type: 'text'; text: string } | { type: 'finish'; promptTokens: number; completionTokens: number };

/**
 * Passes a generation's events through and records, once, how the request ended: time to first
 * text, duration, tokens, and outcome with its error code. A consumer that stops before the
 * finish event (the client went away) records the request as cancelled.
 */
export async function* meteredGeneration<E extends Event>(events: AsyncGenerator<E>, metrics: TandemMetrics, clock: Clock, startedAtMs: number): AsyncGenerator<E> {
  let ended = false;
  let sawText = false;
  const end = (outcome: 'done' | 'failed' | 'cancelled', code: string | undefined): void => {
    if (ended) return;
    ended = true;
    metrics.recordRequest(outcome, code, (clock.now() - startedAtMs) / 1000);
  };
  try {
    for await (const event of events) {
      if (event.type === 'text' && !sawText) {
        sawText = true;
        metrics.observeTimeToFirstToken((clock.now() - startedAtMs) / 1000);
      } else if (event.type === 'finish') {
        metrics.recordTokens(event.promptTokens, event.completionTokens);
        end('done', undefined);
      }
      yield event;
    }
  } catch (error) {
    const code = TandemError.from(error).code;
    end(code === ErrorCode.Cancelled ? 'cancelled' : 'failed', code);
    throw error;
  } finally {
    end('cancelled', ErrorCode.Cancelled);
  }
}
