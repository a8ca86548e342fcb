import type { Discovery, WorkerRecord, WorkerRole } from '../../discovery/discovery.js';
import { ErrorCode, TandemError } from '../../errors.js';
import type { TandemMetrics } from '../../metrics/tandem-metrics.js';
import type { Random } from '../../random/random.js';
import type { KvSelectionOptions } from '../../routing/kv-aware-selection.js';
import type { KvPrefillRanker } from '../../routing/kv-router-feed.js';
import { placePrefill, type ConditionalDisaggregation } from '../../routing/prefill-placement.js';
import type { LoadTicket } from '../../routing/worker-load.js';
import { Router, type RoutingMode } from '../router.js';

/** How a frontend routes its requests. */
export interface RequestRoutingOptions {
  discovery: Discovery;
  /** The model the workers must serve. */
  model: string;
  /** Seeds random routing and tie breaks. */
  random: Random;
  /** KV-aware prefill ranking; needed by (and implying) routing 'kv-aware'. */
  kvFeed?: KvPrefillRanker;
  /** How prefill workers are picked; default 'kv-aware' with a `kvFeed`, else 'round-robin'. */
  routing?: RoutingMode;
  /** Tokens per prefix block (the engines' prefix-cache blocks); default 16. */
  blockTokens?: number;
  /** When decode workers prefill prompts themselves; absent (the default) never. */
  conditionalDisaggregation?: ConditionalDisaggregation;
  /** Counts prefill placements. */
  metrics?: TandemMetrics;
}

/** A stream's load on its decode worker; it moves when another worker takes the stream. */
export interface DecodeLoadTicket {
  /** The stream now runs on `worker`. */
  moveTo(worker: WorkerRecord): void;
  end(): void;
}

/** Where one request goes, and the load it puts on the workers until it is done with them. */
export interface RoutedRequest {
  /** Decode workers in order of preference. */
  decode: WorkerRecord[];
  /** Prefill candidates in order of preference. */
  prefill: WorkerRecord[];
  /** The decode worker prefills the prompt itself (conditional disaggregation). */
  prefillLocally: boolean;
  /** The prefill's load on its worker, to end when the first tokens arrive; absent for a local prefill. */
  prefillTicket?: LoadTicket;
  decodeTicket: DecodeLoadTicket;
}

/**
 * A frontend's routing: the Router (decode and prefill candidates, load per worker), the
 * conditional-disaggregation placement, and the counters of where prompts were prefilled.
 */
export class RequestRouting {
  private readonly router: Router;
  private readonly placements = { remote: 0, local: 0 };

  constructor(private readonly options: RequestRoutingOptions) {
    this.router = new Router(options.discovery, options.model, {
      ...(options.kvFeed ? { kv: options.kvFeed } : {}),
      ...(options.routing ? { mode: options.routing } : {}),
      ...(options.blockTokens !== undefined ? { blockTokens: options.blockTokens } : {}),
      random: options.random.split('routing'),
    });
  }

  /** Workers of a role that serve the model. */
  workers(role: WorkerRole): WorkerRecord[] {
    return this.router.workers(role);
  }

  /** How many prompts went to a prefill worker ('remote') and how many a decode worker prefilled ('local'). */
  get prefillPlacements(): { remote: number; local: number } {
    return { ...this.placements };
  }

  /** The routing mode and the KV blocks in flight on each worker. */
  load(): { mode: RoutingMode; prefill: Record<string, number>; decode: Record<string, number> } {
    return { mode: this.router.mode, prefill: this.router.prefillLoad.snapshot(), decode: this.router.decodeLoad.snapshot() };
  }

  /**
   * Picks workers for a prompt of `promptTokens` generating up to `maxTokens`: decode workers in
   * turn (least loaded first with KV-aware routing), prefill candidates by the routing mode with
   * per-request `weights`, and whether the decode worker prefills locally. Throws no_workers when
   * no decode worker is registered.
   */
  route(promptTokens: readonly number[], maxTokens: number, weights?: KvSelectionOptions): RoutedRequest {
    const { router } = this;
    const decode = router.decodeCandidates();
    if (decode.length === 0) throw new TandemError(ErrorCode.NoWorkers, 'no decode worker is registered');
    const prefill = router.choosePrefill(promptTokens, weights);
    const placement = placePrefill(prefill, router.prefillLoad, this.options.conditionalDisaggregation);
    this.placements[placement.where]++;
    this.options.metrics?.recordPrefillPlacement(placement.where, placement.where === 'local' ? placement.reason : 'disaggregated');
    const first = prefill.candidates[0];
    const prefillTicket = placement.where === 'remote' && first ? router.prefillLoad.begin(first.instanceId, Math.ceil(prefill.uncachedTokens / router.blockTokens)) : undefined;
    return {
      decode,
      prefill: prefill.candidates,
      prefillLocally: placement.where === 'local',
      ...(prefillTicket ? { prefillTicket } : {}),
      decodeTicket: this.decodeTicket(decode[0]!, Math.ceil((promptTokens.length + maxTokens) / router.blockTokens)),
    };
  }

  private decodeTicket(worker: WorkerRecord, blocks: number): DecodeLoadTicket {
    const { decodeLoad } = this.router;
    let on = worker.instanceId;
    let ticket = decodeLoad.begin(on, blocks);
    return {
      moveTo: (next) => {
        if (next.instanceId === on) return;
        ticket.end();
        on = next.instanceId;
        ticket = decodeLoad.begin(on, blocks);
      },
      end: () => ticket.end(),
    };
  }
}
