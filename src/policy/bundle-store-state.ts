/**
 * The pointer rules of a bundle store (see bundle-store.ts), as pure functions over the pointer state, so that the
 * directory and the database stores cannot drift apart: each store loads its state under its own lock, applies one of
 * these, and writes the result and the history entry back in one step.
 */
import { CaracalError } from '../errors/catalog.js';
import { type ActivationResult, type BundleHistoryEntry, REVISION_PATTERN } from './bundle-store.js';

export interface PointerState {
  active: string | null;
  shadow: string | null;
  /** Activated revisions, oldest first; the last one is `active`. */
  stack: string[];
}

export type HistoryDraft = Omit<BundleHistoryEntry, 'seq' | 'at'>;

export interface Change<Result> {
  state: PointerState;
  /** Null when nothing changed (nothing is recorded). */
  entry: HistoryDraft | null;
  result: Result;
}

/** Rollback depth kept; older activations fall off the bottom (history still has them). */
export const MAX_STACK = 1000;
/** `list()` returns at most this many history entries. */
export const HISTORY_LISTED = 100;

/** Revisions name files and appear in URLs: anything else is refused before it reaches either. */
export function checkRevision(revision: string): void {
  if (!REVISION_PATTERN.test(revision)) {
    throw new CaracalError('CARACAL_VALIDATION', `invalid revision ${JSON.stringify(revision.slice(0, 140))}: letters, digits, ".", "_", "-" (at most 128, not starting with a symbol)`);
  }
}

export function notStored(revision: string, store: string): CaracalError {
  return new CaracalError('CARACAL_NOT_FOUND', `revision ${revision} is not published in ${store}`);
}

export function conflictingBytes(revision: string, stored: string, given: string, store: string): CaracalError {
  return new CaracalError(
    'CARACAL_CONFLICT',
    `revision ${revision} is already published in ${store} with other bytes (sha256 ${stored.slice(0, 12)}…, these are ${given.slice(0, 12)}…): a revision names one bundle; build under a new revision`,
  );
}

/** Activating the active revision again changes nothing (no stack entry, no history). */
export function activateChange(state: PointerState, revision: string, actor: string | null): Change<ActivationResult> {
  const previous = state.active;
  if (previous === revision) return { state, entry: null, result: { active: revision, previous } };
  const stack = [...state.stack, revision].slice(-MAX_STACK);
  return {
    state: { ...state, active: revision, stack },
    entry: { action: 'activate', revision, previous, actor },
    result: { active: revision, previous },
  };
}

export function rollbackChange(state: PointerState, actor: string | null, store: string): Change<ActivationResult> {
  if (state.stack.length < 2 || state.active === null) {
    const why = state.active === null ? 'no revision is active' : `${state.active} is the only revision activated`;
    throw new CaracalError('CARACAL_CONFLICT', `nothing to roll back to in ${store}: ${why}`);
  }
  const stack = state.stack.slice(0, -1);
  const active = stack[stack.length - 1]!;
  return {
    state: { ...state, active, stack },
    entry: { action: 'rollback', revision: active, previous: state.active, actor },
    result: { active, previous: state.active },
  };
}

export function shadowChange(state: PointerState, revision: string | null, actor: string | null): Change<{ shadow: string | null; previous: string | null }> {
  const previous = state.shadow;
  const result = { shadow: revision, previous };
  if (previous === revision) return { state, entry: null, result };
  return {
    state: { ...state, shadow: revision },
    entry: revision === null ? { action: 'unshadow', revision: null, previous, actor } : { action: 'shadow', revision, previous, actor },
    result,
  };
}
