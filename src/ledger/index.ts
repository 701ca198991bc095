// The pure core of the decision ledger: Merkle tree, canonical leaf input, signed notes and checkpoints, tlog-proofs.
// See README.md in this folder.
export * from './errors.js';
export * from './merkle.js';
export * from './canonical.js';
export * from './note.js';
export * from './proof-format.js';
