// Command go-verify checks Caracal's ledger artefacts (signed checkpoints, leaf hashes, inclusion and consistency
// proofs) with Go implementations we did not write:
//
//   - github.com/transparency-dev/formats/note: NewECDSAVerifier parses the verifier key string and re-derives its key
//     id (it rejects a key whose id is not SHA-256(DER SPKI)[:4]); the verifier checks ASN.1 ECDSA over SHA-256(text).
//   - golang.org/x/mod/sumdb/note: Open splits the signed note, matches signature lines to the verifier by name and
//     key id and verifies them.
//   - github.com/transparency-dev/formats/log: ParseCheckpoint opens the note again and parses the checkpoint body.
//   - golang.org/x/mod/sumdb/tlog: RecordHash (RFC 6962 leaf hash), StoredHashes/TreeHash (an independent tree),
//     CheckRecord (inclusion), CheckTree (consistency), and ProveRecord/ProveTree to compare proofs byte for byte.
//
// Proof shapes. tlog's RecordProof is RFC 6962's audit path PATH(m, D[n]) and its TreeProof is RFC 6962's
// PROOF(m, D[n]) = SUBPROOF(m, D[n], true): leafProof/treeProof in tlog.go recurse with the same split
// (k = largest power of two smaller than n, "m <= k" goes left) and append the other subtree's hash *after* the
// sub-proof, so both lists run from the leaf (or the old tree's boundary) up to the root's child. RFC 9162 §2.1.3.1 and
// §2.1.4.1 define the same lists in the same order (its verification algorithms consume them in that order), and
// c2sp.org/tlog-proof carries them so. Caracal's proofs are therefore passed to tlog unchanged, and this program also
// asserts that tlog.ProveRecord/ProveTree, computed from the leaf hashes alone, produce exactly the same hashes.
//
// Usage: go-verify INPUT.json. Prints {"ok":true,"checked":{...}} and exits 0, or prints {"ok":false,"error":...} and
// exits 1. `go-verify tiles -url …` verifies a live log over HTTP from its tiles instead (tiles.go).
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Input is what the TypeScript test writes. Bytes are standard base64 (encoding/json's []byte encoding).
type Input struct {
	Origin      string `json:"origin"`
	VerifierKey string `json:"verifierKey"`
	Checkpoints []struct {
		Size int64  `json:"size"`
		Note string `json:"note"`
	} `json:"checkpoints"`
	Leaves []struct {
		Input []byte `json:"input"` // the RFC 8785 canonical event bytes (the leaf input)
		Hash  []byte `json:"hash"`  // Caracal's eventLeafHash of the event
	} `json:"leaves"`
	Inclusion   []inclusionInput   `json:"inclusion"`
	Consistency []consistencyInput `json:"consistency"`
}

// Proofs handed over as JSON, in both modes.
type inclusionInput struct {
	Index    int64    `json:"index"`
	TreeSize int64    `json:"treeSize"`
	Proof    [][]byte `json:"proof"`
}

type consistencyInput struct {
	OldSize int64    `json:"oldSize"`
	NewSize int64    `json:"newSize"`
	Proof   [][]byte `json:"proof"`
}

type counts struct {
	Checkpoints         int `json:"checkpoints"`
	Leaves              int `json:"leaves"`
	RootsRecomputed     int `json:"rootsRecomputed"`
	Inclusion           int `json:"inclusion"`
	Consistency         int `json:"consistency"`
	ProofsEqualToTlog   int `json:"proofsEqualToTlog"`
	RejectedNotes       int `json:"rejectedNotes"`
	RejectedKeys        int `json:"rejectedKeys"`
	RejectedInclusion   int `json:"rejectedInclusion"`
	RejectedConsistency int `json:"rejectedConsistency"`
	RejectedOrigin      int `json:"rejectedOrigin"`
}

type result struct {
	OK      bool   `json:"ok"`
	Checked any    `json:"checked,omitempty"` // *counts, or *tileCounts in the tiles mode
	Error   string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "tiles" {
		tilesMain(os.Args[2:])
		return
	}
	if len(os.Args) != 2 {
		fail(errors.New("usage: go-verify INPUT.json"))
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	var in Input
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		fail(fmt.Errorf("reading input: %w", err))
	}
	c, err := run(&in)
	if err != nil {
		fail(err)
	}
	emit(result{OK: true, Checked: c})
}

func fail(err error) {
	emit(result{OK: false, Error: err.Error()})
	os.Exit(1)
}

func emit(r result) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(r)
}

type tree struct {
	size int64
	root tlog.Hash
}

func run(in *Input) (*counts, error) {
	c := &counts{}

	// --- The verifier key: transparency-dev/formats parses it and recomputes the key id from the SPKI. ---------------
	verifier, err := fnote.NewECDSAVerifier(in.VerifierKey)
	if err != nil {
		return nil, fmt.Errorf("NewECDSAVerifier rejected our verifier key %q: %w", in.VerifierKey, err)
	}
	if verifier.Name() != in.Origin {
		return nil, fmt.Errorf("verifier name %q, want origin %q", verifier.Name(), in.Origin)
	}
	// The generic dispatcher must pick the same ECDSA verifier from the type byte.
	if v2, err := fnote.NewVerifier(in.VerifierKey); err != nil || v2.KeyHash() != verifier.KeyHash() {
		return nil, fmt.Errorf("fnote.NewVerifier on our key: %v", err)
	}
	if err := checkBadKeys(in.VerifierKey, c); err != nil {
		return nil, err
	}

	// --- Checkpoints: open with x/mod's note.Open, parse with formats/log.ParseCheckpoint. -------------------------------
	verifiers := note.VerifierList(verifier)
	trees := map[int64]tree{}
	for _, cp := range in.Checkpoints {
		n, err := note.Open([]byte(cp.Note), verifiers)
		if err != nil {
			return nil, fmt.Errorf("note.Open rejected checkpoint %d: %w", cp.Size, err)
		}
		if len(n.Sigs) != 1 || n.Sigs[0].Name != in.Origin || n.Sigs[0].Hash != verifier.KeyHash() || len(n.UnverifiedSigs) != 0 {
			return nil, fmt.Errorf("checkpoint %d: unexpected signatures %+v / %+v", cp.Size, n.Sigs, n.UnverifiedSigs)
		}
		parsed, rest, _, err := log.ParseCheckpoint([]byte(cp.Note), in.Origin, verifier)
		if err != nil {
			return nil, fmt.Errorf("log.ParseCheckpoint rejected checkpoint %d: %w", cp.Size, err)
		}
		if len(rest) != 0 {
			return nil, fmt.Errorf("checkpoint %d has unexpected extension lines %q", cp.Size, rest)
		}
		if int64(parsed.Size) != cp.Size || len(parsed.Hash) != tlog.HashSize {
			return nil, fmt.Errorf("checkpoint %d parsed as size %d with a %d-byte root", cp.Size, parsed.Size, len(parsed.Hash))
		}
		// Our text must be byte-identical to what formats/log would write for the same checkpoint.
		if string(parsed.Marshal()) != n.Text {
			return nil, fmt.Errorf("checkpoint %d text %q differs from log.Checkpoint.Marshal %q", cp.Size, n.Text, parsed.Marshal())
		}
		var root tlog.Hash
		copy(root[:], parsed.Hash)
		trees[cp.Size] = tree{size: cp.Size, root: root}
		c.Checkpoints++

		if err := checkTamperedNotes(cp.Note, in.Origin, verifier, verifiers, c); err != nil {
			return nil, fmt.Errorf("checkpoint %d: %w", cp.Size, err)
		}
	}

	// --- Leaves: tlog.RecordHash over the canonical bytes must equal our eventLeafHash. ---------------------------------
	store := map[int64]tlog.Hash{}
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			h, ok := store[x]
			if !ok {
				return nil, fmt.Errorf("stored hash %d missing", x)
			}
			out[i] = h
		}
		return out, nil
	})
	leafHashes := make([]tlog.Hash, len(in.Leaves))
	for i, leaf := range in.Leaves {
		h := tlog.RecordHash(leaf.Input)
		if !bytes.Equal(h[:], leaf.Hash) {
			return nil, fmt.Errorf("leaf %d: tlog.RecordHash %x, ours %x", i, h[:], leaf.Hash)
		}
		leafHashes[i] = h
		// An independent tree built by tlog from the leaf hashes.
		hashes, err := tlog.StoredHashesForRecordHash(int64(i), h, reader)
		if err != nil {
			return nil, fmt.Errorf("tlog.StoredHashes(%d): %w", i, err)
		}
		for j, sh := range hashes {
			store[tlog.StoredHashIndex(0, int64(i))+int64(j)] = sh
		}
		c.Leaves++
	}
	for _, t := range trees {
		if t.size > int64(len(leafHashes)) {
			return nil, fmt.Errorf("checkpoint size %d exceeds the %d leaves given", t.size, len(leafHashes))
		}
		th, err := tlog.TreeHash(t.size, reader)
		if err != nil {
			return nil, fmt.Errorf("tlog.TreeHash(%d): %w", t.size, err)
		}
		if th != t.root {
			return nil, fmt.Errorf("tlog.TreeHash(%d) = %x, the signed checkpoint says %x", t.size, th[:], t.root[:])
		}
		c.RootsRecomputed++
	}

	// --- Inclusion proofs: tlog.CheckRecord against a verified checkpoint. -----------------------------------------------
	for _, p := range in.Inclusion {
		t, ok := trees[p.TreeSize]
		if !ok {
			return nil, fmt.Errorf("inclusion proof for index %d: no checkpoint of size %d", p.Index, p.TreeSize)
		}
		if p.Index < 0 || p.Index >= int64(len(leafHashes)) {
			return nil, fmt.Errorf("inclusion proof index %d out of range", p.Index)
		}
		proof, err := toHashes(p.Proof)
		if err != nil {
			return nil, err
		}
		leaf := leafHashes[p.Index]
		if err := tlog.CheckRecord(tlog.RecordProof(proof), t.size, t.root, p.Index, leaf); err != nil {
			return nil, fmt.Errorf("tlog.CheckRecord(index %d, size %d) rejected our proof: %w", p.Index, t.size, err)
		}
		c.Inclusion++
		theirs, err := tlog.ProveRecord(t.size, p.Index, reader)
		if err != nil {
			return nil, fmt.Errorf("tlog.ProveRecord(%d, %d): %w", t.size, p.Index, err)
		}
		if !equalHashes(theirs, proof) {
			return nil, fmt.Errorf("inclusion %d@%d: our proof differs from tlog.ProveRecord", p.Index, t.size)
		}
		c.ProofsEqualToTlog++

		// Negative cases: every single-bit flip of every proof hash, of the leaf hash and of the root; wrong index;
		// truncated and extended proofs.
		for i := range proof {
			bad := clone(proof)
			bad[i][i%tlog.HashSize] ^= 1 << (i % 8)
			if err := rejectRecord(bad, t.size, t.root, p.Index, leaf, c, "flipped bit in proof hash %d", i); err != nil {
				return nil, err
			}
		}
		badLeaf := leaf
		badLeaf[31] ^= 0x80
		if err := rejectRecord(proof, t.size, t.root, p.Index, badLeaf, c, "flipped bit in leaf hash"); err != nil {
			return nil, err
		}
		badRoot := t.root
		badRoot[0] ^= 1
		if err := rejectRecord(proof, t.size, badRoot, p.Index, leaf, c, "flipped bit in root"); err != nil {
			return nil, err
		}
		if p.Index+1 < t.size {
			if err := rejectRecord(proof, t.size, t.root, p.Index+1, leaf, c, "index+1"); err != nil {
				return nil, err
			}
		}
		if len(proof) > 0 {
			if err := rejectRecord(proof[:len(proof)-1], t.size, t.root, p.Index, leaf, c, "truncated proof"); err != nil {
				return nil, err
			}
		}
		if err := rejectRecord(append(clone(proof), t.root), t.size, t.root, p.Index, leaf, c, "extended proof"); err != nil {
			return nil, err
		}
	}

	// --- Consistency proofs: tlog.CheckTree between two verified checkpoints. --------------------------------------------
	for _, p := range in.Consistency {
		oldT, ok1 := trees[p.OldSize]
		newT, ok2 := trees[p.NewSize]
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("consistency %d->%d: no checkpoint for one of the sizes", p.OldSize, p.NewSize)
		}
		proof, err := toHashes(p.Proof)
		if err != nil {
			return nil, err
		}
		if err := tlog.CheckTree(tlog.TreeProof(proof), newT.size, newT.root, oldT.size, oldT.root); err != nil {
			return nil, fmt.Errorf("tlog.CheckTree(%d -> %d) rejected our proof: %w", oldT.size, newT.size, err)
		}
		c.Consistency++
		theirs, err := tlog.ProveTree(newT.size, oldT.size, reader)
		if err != nil {
			return nil, fmt.Errorf("tlog.ProveTree(%d, %d): %w", newT.size, oldT.size, err)
		}
		if !equalHashes(theirs, proof) {
			return nil, fmt.Errorf("consistency %d->%d: our proof differs from tlog.ProveTree", oldT.size, newT.size)
		}
		c.ProofsEqualToTlog++

		for i := range proof {
			bad := clone(proof)
			bad[i][(7*i)%tlog.HashSize] ^= 1 << (i % 8)
			if err := rejectTree(bad, newT, oldT, c, "flipped bit in proof hash %d", i); err != nil {
				return nil, err
			}
		}
		badOld := oldT
		badOld.root[5] ^= 4
		if err := rejectTree(proof, newT, badOld, c, "flipped bit in old root"); err != nil {
			return nil, err
		}
		badNew := newT
		badNew.root[9] ^= 2
		if err := rejectTree(proof, badNew, oldT, c, "flipped bit in new root"); err != nil {
			return nil, err
		}
		if len(proof) > 0 {
			if err := rejectTree(proof[1:], newT, oldT, c, "proof without its first hash"); err != nil {
				return nil, err
			}
		}
		if oldT.size > 1 {
			if err := rejectTree(proof, newT, tree{size: oldT.size - 1, root: oldT.root}, c, "old size - 1"); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// checkBadKeys: a verifier key with a wrong key id, or with another type byte, must not be accepted.
func checkBadKeys(vkey string, c *counts) error {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return fmt.Errorf("verifier key %q is not name+id+key", vkey)
	}
	wrongID := parts[0] + "+" + flipHexDigit(parts[1]) + "+" + parts[2]
	if _, err := fnote.NewECDSAVerifier(wrongID); err == nil {
		return errors.New("NewECDSAVerifier accepted a key with a wrong key id")
	}
	c.RejectedKeys++
	keyBytes, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return err
	}
	keyBytes[0] = 0x01 // Ed25519's type byte in front of an ECDSA SPKI
	if _, err := fnote.NewECDSAVerifier(parts[0] + "+" + parts[1] + "+" + base64.StdEncoding.EncodeToString(keyBytes)); err == nil {
		return errors.New("NewECDSAVerifier accepted a key with type byte 0x01")
	}
	c.RejectedKeys++
	return nil
}

// checkTamperedNotes: a changed text, a changed signature, or another key with the same name must not open.
func checkTamperedNotes(signed, origin string, verifier note.Verifier, verifiers note.Verifiers, c *counts) error {
	sep := strings.LastIndex(signed, "\n\n")
	text, sigs := signed[:sep+1], signed[sep+1:]
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")

	// 1. The size line changed (one more leaf).
	tampered := []string{lines[0], lines[1] + "0", lines[2]}
	if err := rejectNote(strings.Join(tampered, "\n")+"\n"+sigs, verifiers, c, "changed size"); err != nil {
		return err
	}
	// 2. One bit of the root hash changed.
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil {
		return err
	}
	root[17] ^= 0x10
	tampered = []string{lines[0], lines[1], base64.StdEncoding.EncodeToString(root)}
	if err := rejectNote(strings.Join(tampered, "\n")+"\n"+sigs, verifiers, c, "changed root"); err != nil {
		return err
	}
	// 3. An extension line appended to the text.
	if err := rejectNote(text+"extra\n"+sigs, verifiers, c, "appended line"); err != nil {
		return err
	}
	// 4. A flipped bit in the DER signature (after the 4-byte key id).
	sigLine := strings.TrimSuffix(strings.TrimPrefix(sigs, "\n"), "\n")
	fields := strings.Fields(sigLine) // "—", name, base64
	if len(fields) != 3 {
		return fmt.Errorf("unexpected signature line %q", sigLine)
	}
	sigBytes, err := base64.StdEncoding.DecodeString(fields[2])
	if err != nil {
		return err
	}
	sigBytes[len(sigBytes)-3] ^= 0x01
	badSig := "\n" + fields[0] + " " + fields[1] + " " + base64.StdEncoding.EncodeToString(sigBytes) + "\n"
	if err := rejectNote(text+badSig, verifiers, c, "flipped signature bit"); err != nil {
		return err
	}
	// 5. A different P-256 key under the same name: the signature's key id is unknown to it, so the note is unverified.
	other, err := otherVerifier(origin)
	if err != nil {
		return err
	}
	if _, err := note.Open([]byte(signed), note.VerifierList(other)); err == nil {
		return errors.New("note.Open accepted our checkpoint with another key")
	} else if !isUnverified(err) {
		return fmt.Errorf("note.Open with another key: unexpected error %v", err)
	}
	c.RejectedNotes++
	// 6. formats/log with the right key but the wrong origin.
	if _, _, _, err := log.ParseCheckpoint([]byte(signed), origin+"x", verifier); err == nil {
		return errors.New("log.ParseCheckpoint accepted a checkpoint for another origin")
	}
	c.RejectedOrigin++
	return nil
}

func rejectNote(msg string, verifiers note.Verifiers, c *counts, what string) error {
	if _, err := note.Open([]byte(msg), verifiers); err == nil {
		return fmt.Errorf("note.Open accepted a note with a %s", what)
	}
	c.RejectedNotes++
	return nil
}

func isUnverified(err error) bool {
	var u *note.UnverifiedNoteError
	return errors.As(err, &u)
}

// otherVerifier makes a fresh P-256 key and its verifier under the given name (key id derived here, in Go).
func otherVerifier(name string) (note.Verifier, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(der)
	vkey := fmt.Sprintf("%s+%08x+%s", name, binary.BigEndian.Uint32(sum[:4]), base64.StdEncoding.EncodeToString(append([]byte{0x02}, der...)))
	return fnote.NewECDSAVerifier(vkey)
}

func rejectRecord(p []tlog.Hash, size int64, root tlog.Hash, index int64, leaf tlog.Hash, c *counts, what string, args ...any) error {
	if err := tlog.CheckRecord(tlog.RecordProof(p), size, root, index, leaf); err == nil {
		return fmt.Errorf("tlog.CheckRecord(index %d, size %d) accepted a bad proof: %s", index, size, fmt.Sprintf(what, args...))
	}
	c.RejectedInclusion++
	return nil
}

func rejectTree(p []tlog.Hash, newT, oldT tree, c *counts, what string, args ...any) error {
	if err := tlog.CheckTree(tlog.TreeProof(p), newT.size, newT.root, oldT.size, oldT.root); err == nil {
		return fmt.Errorf("tlog.CheckTree(%d -> %d) accepted a bad proof: %s", oldT.size, newT.size, fmt.Sprintf(what, args...))
	}
	c.RejectedConsistency++
	return nil
}

func toHashes(raw [][]byte) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(raw))
	for i, b := range raw {
		if len(b) != tlog.HashSize {
			return nil, fmt.Errorf("proof hash %d is %d bytes", i, len(b))
		}
		copy(out[i][:], b)
	}
	return out, nil
}

func equalHashes[T ~[]tlog.Hash](a T, b []tlog.Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func clone(p []tlog.Hash) []tlog.Hash {
	return append([]tlog.Hash(nil), p...)
}

func flipHexDigit(s string) string {
	b := []byte(s)
	if b[0] == '0' {
		b[0] = '1'
	} else {
		b[0] = '0'
	}
	return string(b)
}
