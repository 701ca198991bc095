// The "tiles" mode: verify a live log over HTTP the way a monitor would, from its c2sp.org/tlog-tiles endpoints alone.
//
//	go-verify tiles -url BASE -key VERIFIER_KEY [-origin ORIGIN] [-old OLD_CHECKPOINT_FILE] [-proofs PROOFS.json]
//
// BASE is the log's prefix, e.g. http://127.0.0.1:8080/ledger/caracal.example/log (no trailing slash). The program
//
//   - GETs BASE/checkpoint and opens it with golang.org/x/mod/sumdb/note.Open and the verifier from
//     github.com/transparency-dev/formats/note.NewECDSAVerifier, then parses it with formats/log.ParseCheckpoint,
//     checking the origin (ORIGIN, by default the key's name);
//   - reads hash tiles through tlog.TileHashReader over a tlog.TileReader that GETs BASE/tile/<L>/<N>[.p/<W>]: sumdb's
//     Tile.Path() is "tile/<H>/<L>/…", C2SP tlog-tiles drops the height (fixed at 8), so the reader strips "<H>/".
//     TileHashReader checks the tiles against the signed root (not all of them, see runTiles: which is why every
//     hash taken from the tiles is also put through CheckRecord);
//   - reads the entry bundles BASE/tile/entries/<N>[.p/<W>] (each entry a big-endian uint16 length, then the bytes),
//     hashes each entry with tlog.RecordHash and requires the hash tiles' leaf hash to be that;
//   - for every leaf (a sample — first, last, both sides of each 256 boundary — above 2000 leaves) proves inclusion
//     with tlog.ProveRecord from the tiles and checks it with tlog.CheckRecord against the checkpoint and the entry's
//     own record hash (which authenticates the entry); recomputes the root with tlog.TreeHash;
//   - with -old (an earlier checkpoint of the same log, as signed note text): opens it the same way, recomputes its
//     root from the new tree's tiles and from its own (partial) tiles, proves inclusion of its leaves against it,
//     and proves consistency old → new with tlog.ProveTree + tlog.CheckTree;
//   - with -proofs (JSON {"inclusion":[{"index","treeSize","proof":[base64…]}],"consistency":[{"oldSize","newSize",
//     "proof"}]}, the log's own proofs for the checkpoint sizes above): checks each with tlog.CheckRecord/CheckTree
//     and requires it to equal tlog.ProveRecord/ProveTree;
//   - negative checks, each of which must fail: tampered notes (as in the file mode), the wrong origin, a flipped bit
//     in every hash tile read (TileHashReader, or else a CheckRecord over the tile's leaves, must refuse it), and per
//     proof a flipped bit in each hash, a wrong
//     index, a wrong root and a wrong record hash (inclusion) or old/new root, first hash dropped, old size − 1
//     (consistency).
//
// Prints one JSON line {"ok":true,"checked":{…}} and exits 0, or {"ok":false,"error":…} and exits 1.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// tileHeight is fixed by c2sp.org/tlog-tiles.
const tileHeight = 8

// maxSampleAll: up to this many leaves, every leaf is proven.
const maxSampleAll = 2000

type tileCounts struct {
	Checkpoints     int `json:"checkpoints"`
	RootsRecomputed int `json:"rootsRecomputed"`
	EntryBundles    int `json:"entryBundles"`
	Entries         int `json:"entries"`
	Inclusion       int `json:"inclusion"`
	Consistency     int `json:"consistency"`
	OurInclusion    int `json:"ourInclusion"`
	OurConsistency  int `json:"ourConsistency"`
	RejectedNotes   int `json:"rejectedNotes"`
	RejectedOrigin  int `json:"rejectedOrigin"`
	RejectedTiles   int `json:"rejectedTiles"`
	// of RejectedTiles, those TileHashReader returned hashes from (see runTiles)
	TilesCaughtOnlyByCheckRecord int      `json:"tilesCaughtOnlyByCheckRecord"`
	RejectedInclusion            int      `json:"rejectedInclusion"`
	RejectedConsistency          int      `json:"rejectedConsistency"`
	Fetched                      []string `json:"fetched"` // every tile path GET, once each, sorted
}

type ourProofs struct {
	Inclusion   []inclusionInput   `json:"inclusion"`
	Consistency []consistencyInput `json:"consistency"`
}

func tilesMain(args []string) {
	fs := flag.NewFlagSet("tiles", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	base := fs.String("url", "", "the log's URL prefix (…/checkpoint and …/tile/… below it)")
	vkey := fs.String("key", "", "the checkpoint verifier key, <name>+<hex key id>+<base64>")
	origin := fs.String("origin", "", "the expected checkpoint origin (default: the key's name)")
	oldFile := fs.String("old", "", "a file holding an earlier signed checkpoint of the same log")
	proofsFile := fs.String("proofs", "", "a JSON file of the log's own inclusion/consistency proofs")
	if err := fs.Parse(args); err != nil {
		fail(fmt.Errorf("go-verify tiles: %w", err))
	}
	if *base == "" || *vkey == "" || fs.NArg() != 0 {
		fail(errors.New("usage: go-verify tiles -url BASE -key VERIFIER_KEY [-origin ORIGIN] [-old FILE] [-proofs FILE]"))
	}
	c, err := runTiles(strings.TrimSuffix(*base, "/"), *vkey, *origin, *oldFile, *proofsFile)
	if err != nil {
		fail(err)
	}
	emit(result{OK: true, Checked: c})
}

// httpLog fetches from the log's prefix. Tiles are immutable once served for a given width, so each path is fetched
// once and kept in memory; every read still goes through TileHashReader's authentication against the signed root.
type httpLog struct {
	base   string
	client *http.Client
	cache  map[string][]byte
}

func (l *httpLog) fetch(path string) ([]byte, error) {
	url := l.base + "/" + path
	resp, err := l.client.Get(url)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %.200q", url, resp.Status, body)
	}
	return body, nil
}

func (l *httpLog) tile(path string) ([]byte, error) {
	if b, ok := l.cache[path]; ok {
		return b, nil
	}
	b, err := l.fetch(path)
	if err != nil {
		return nil, err
	}
	l.cache[path] = b
	return b, nil
}

// c2spTilePath: sumdb's Tile.Path() without the height element; data tiles (L = -1) are C2SP's entry bundles.
func c2spTilePath(t tlog.Tile) (string, error) {
	if t.H != tileHeight || t.L < -1 {
		return "", fmt.Errorf("unexpected tile %+v", t)
	}
	p := t.Path()
	prefix := fmt.Sprintf("tile/%d/", t.H)
	if !strings.HasPrefix(p, prefix) {
		return "", fmt.Errorf("tlog.Tile.Path() = %q, expected the prefix %q", p, prefix)
	}
	rest := strings.TrimPrefix(p, prefix)
	if t.L == -1 {
		if !strings.HasPrefix(rest, "data/") {
			return "", fmt.Errorf("tlog.Tile.Path() = %q for a data tile", p)
		}
		return "tile/entries/" + strings.TrimPrefix(rest, "data/"), nil
	}
	return "tile/" + rest, nil
}

// httpTileReader is a tlog.TileReader over HTTP. It records which tiles tlog asked for; `tamper`, when set, gets one
// bit of its last hash flipped on the way to tlog.
type httpTileReader struct {
	log    *httpLog
	read   map[tlog.Tile]bool
	tamper *tlog.Tile
}

func (r *httpTileReader) Height() int { return tileHeight }

func (r *httpTileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		if t.L < 0 {
			return nil, fmt.Errorf("tlog asked for a data tile %+v as a hash tile", t)
		}
		path, err := c2spTilePath(t)
		if err != nil {
			return nil, err
		}
		b, err := r.log.tile(path)
		if err != nil {
			return nil, err
		}
		if r.read != nil {
			r.read[t] = true
		}
		if r.tamper != nil && *r.tamper == t && len(b) > 0 {
			b = bytes.Clone(b)
			b[len(b)-1] ^= 0x01
		}
		out[i] = b
	}
	return out, nil
}

func (r *httpTileReader) SaveTiles([]tlog.Tile, [][]byte) {}

// openServedCheckpoint opens a signed checkpoint with note.Open, parses it with formats/log, and runs the tampering
// checks of the file mode on it.
func openServedCheckpoint(what, text, origin string, verifier note.Verifier, c *tileCounts) (tree, error) {
	verifiers := note.VerifierList(verifier)
	n, err := note.Open([]byte(text), verifiers)
	if err != nil {
		return tree{}, fmt.Errorf("%s: note.Open with the verifier key %s+%08x: %w", what, verifier.Name(), verifier.KeyHash(), err)
	}
	if len(n.Sigs) != 1 || n.Sigs[0].Hash != verifier.KeyHash() || len(n.UnverifiedSigs) != 0 {
		return tree{}, fmt.Errorf("%s: unexpected signatures %+v / %+v", what, n.Sigs, n.UnverifiedSigs)
	}
	parsed, rest, _, err := log.ParseCheckpoint([]byte(text), origin, verifier)
	if err != nil {
		return tree{}, fmt.Errorf("%s: log.ParseCheckpoint (origin %q): %w", what, origin, err)
	}
	if len(rest) != 0 {
		return tree{}, fmt.Errorf("%s has unexpected extension lines %q", what, rest)
	}
	if len(parsed.Hash) != tlog.HashSize || parsed.Size < 1 {
		return tree{}, fmt.Errorf("%s: size %d with a %d-byte root", what, parsed.Size, len(parsed.Hash))
	}
	if string(parsed.Marshal()) != n.Text {
		return tree{}, fmt.Errorf("%s: text %q differs from log.Checkpoint.Marshal %q", what, n.Text, parsed.Marshal())
	}
	var t tree
	t.size = int64(parsed.Size)
	copy(t.root[:], parsed.Hash)
	c.Checkpoints++
	var tampered counts
	if err := checkTamperedNotes(text, origin, verifier, verifiers, &tampered); err != nil {
		return tree{}, fmt.Errorf("%s: %w", what, err)
	}
	c.RejectedNotes += tampered.RejectedNotes
	c.RejectedOrigin += tampered.RejectedOrigin
	return t, nil
}

func runTiles(base, vkey, origin, oldFile, proofsFile string) (*tileCounts, error) {
	c := &tileCounts{}
	verifier, err := fnote.NewECDSAVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("NewECDSAVerifier rejected the verifier key %q: %w", vkey, err)
	}
	if origin == "" {
		origin = verifier.Name()
	}
	lg := &httpLog{base: base, client: &http.Client{Timeout: 20 * time.Second}, cache: map[string][]byte{}}

	// --- The newest checkpoint, over HTTP. ------------------------------------------------------------------------------
	cpText, err := lg.fetch("checkpoint")
	if err != nil {
		return nil, err
	}
	newT, err := openServedCheckpoint("checkpoint "+base+"/checkpoint", string(cpText), origin, verifier, c)
	if err != nil {
		return nil, err
	}
	newReader := &httpTileReader{log: lg, read: map[tlog.Tile]bool{}}
	hr := tlog.TileHashReader(tlog.Tree{N: newT.size, Hash: newT.root}, newReader)
	if th, err := tlog.TreeHash(newT.size, hr); err != nil {
		return nil, fmt.Errorf("tlog.TreeHash(%d) from the tiles: %w", newT.size, err)
	} else if th != newT.root {
		return nil, fmt.Errorf("tlog.TreeHash(%d) from the tiles = %x, the checkpoint says %x", newT.size, th[:], newT.root[:])
	}
	c.RootsRecomputed++

	// --- Entry bundles: each entry's tlog.RecordHash is the authenticated leaf hash of the hash tiles. -------------------
	sample := sampleIndexes(newT.size)
	records := map[int64]tlog.Hash{}
	bundles := map[int64]bool{}
	for _, i := range sample {
		bundles[i/(1<<tileHeight)] = true
	}
	for _, b := range sortedKeys(bundles) {
		first := b << tileHeight
		width := min(int64(1<<tileHeight), newT.size-first)
		path, err := c2spTilePath(tlog.Tile{H: tileHeight, L: -1, N: b, W: int(width)})
		if err != nil {
			return nil, err
		}
		data, err := lg.tile(path)
		if err != nil {
			return nil, err
		}
		entries, err := splitBundle(data)
		if err != nil {
			return nil, fmt.Errorf("entry bundle %s: %w", path, err)
		}
		if int64(len(entries)) != width {
			return nil, fmt.Errorf("entry bundle %s holds %d entries, want %d", path, len(entries), width)
		}
		indexes := make([]int64, width)
		for j := range indexes {
			indexes[j] = tlog.StoredHashIndex(0, first+int64(j))
		}
		leaves, err := hr.ReadHashes(indexes)
		if err != nil {
			return nil, fmt.Errorf("leaf hashes %d-%d from the tiles: %w", first, first+width-1, err)
		}
		for j, entry := range entries {
			h := tlog.RecordHash(entry)
			if h != leaves[j] {
				return nil, fmt.Errorf("entry %d: tlog.RecordHash %x, the hash tile says %x", first+int64(j), h[:], leaves[j][:])
			}
			records[first+int64(j)] = h
			c.Entries++
		}
		c.EntryBundles++
	}

	// --- Inclusion of each sampled leaf in the newest checkpoint, proven from the tiles by tlog. -------------------------
	for _, i := range sample {
		if err := proveAndCheckRecord(newT, i, records[i], hr, c); err != nil {
			return nil, err
		}
	}

	trees := map[int64]tree{newT.size: newT}
	readers := []*httpTileReader{newReader}
	roots := []tree{newT}

	// --- An older checkpoint: its root from both trees' tiles, its leaves' inclusion, consistency old → new. -----------
	if oldFile != "" {
		raw, err := os.ReadFile(oldFile)
		if err != nil {
			return nil, err
		}
		oldT, err := openServedCheckpoint("older checkpoint "+oldFile, string(raw), origin, verifier, c)
		if err != nil {
			return nil, err
		}
		if oldT.size > newT.size {
			return nil, fmt.Errorf("the older checkpoint has size %d, more than the newest (%d)", oldT.size, newT.size)
		}
		if oldT.size == newT.size {
			if oldT.root != newT.root {
				return nil, fmt.Errorf("two checkpoints of size %d with different roots", oldT.size)
			}
		} else {
			// The old root from the new tree's (authenticated) tiles, then from the old tree's own tiles, which are
			// partial prefixes of what is full now.
			if th, err := tlog.TreeHash(oldT.size, hr); err != nil || th != oldT.root {
				return nil, fmt.Errorf("tlog.TreeHash(%d) from the newest tree's tiles = %x (%v), the older checkpoint says %x", oldT.size, th[:], err, oldT.root[:])
			}
			c.RootsRecomputed++
			oldReader := &httpTileReader{log: lg, read: map[tlog.Tile]bool{}}
			oldHR := tlog.TileHashReader(tlog.Tree{N: oldT.size, Hash: oldT.root}, oldReader)
			if th, err := tlog.TreeHash(oldT.size, oldHR); err != nil || th != oldT.root {
				return nil, fmt.Errorf("tlog.TreeHash(%d) from its own tiles = %x (%v), the older checkpoint says %x", oldT.size, th[:], err, oldT.root[:])
			}
			c.RootsRecomputed++
			for _, i := range sampleIndexes(oldT.size) {
				h, ok := records[i]
				if !ok {
					if h, err = leafHash(hr, i); err != nil {
						return nil, err
					}
				}
				if err := proveAndCheckRecord(oldT, i, h, oldHR, c); err != nil {
					return nil, err
				}
			}
			proof, err := tlog.ProveTree(newT.size, oldT.size, hr)
			if err != nil {
				return nil, fmt.Errorf("tlog.ProveTree(%d, %d) from the tiles: %w", newT.size, oldT.size, err)
			}
			if err := tlog.CheckTree(proof, newT.size, newT.root, oldT.size, oldT.root); err != nil {
				return nil, fmt.Errorf("tlog.CheckTree(%d -> %d): %w", oldT.size, newT.size, err)
			}
			c.Consistency++
			if err := rejectBadTreeProofs(proof, newT, oldT, c); err != nil {
				return nil, err
			}
			readers = append(readers, oldReader)
			roots = append(roots, oldT)
		}
		trees[oldT.size] = oldT
	}

	// --- The log's own proofs, checked by tlog and compared with tlog's. -------------------------------------------------
	if proofsFile != "" {
		raw, err := os.ReadFile(proofsFile)
		if err != nil {
			return nil, err
		}
		var ours ourProofs
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ours); err != nil {
			return nil, fmt.Errorf("reading %s: %w", proofsFile, err)
		}
		for _, p := range ours.Inclusion {
			t, ok := trees[p.TreeSize]
			if !ok || p.Index < 0 || p.Index >= t.size {
				return nil, fmt.Errorf("our inclusion proof %d@%d: no verified checkpoint of that size, or index out of range", p.Index, p.TreeSize)
			}
			proof, err := toHashes(p.Proof)
			if err != nil {
				return nil, err
			}
			h, ok := records[p.Index]
			if !ok {
				if h, err = leafHash(hr, p.Index); err != nil {
					return nil, err
				}
			}
			if err := tlog.CheckRecord(proof, t.size, t.root, p.Index, h); err != nil {
				return nil, fmt.Errorf("tlog.CheckRecord rejected our inclusion proof %d@%d: %w", p.Index, t.size, err)
			}
			theirs, err := tlog.ProveRecord(t.size, p.Index, hr)
			if err != nil {
				return nil, err
			}
			if !equalHashes(theirs, proof) {
				return nil, fmt.Errorf("our inclusion proof %d@%d differs from tlog.ProveRecord over the tiles", p.Index, t.size)
			}
			c.OurInclusion++
		}
		for _, p := range ours.Consistency {
			oldT, ok1 := trees[p.OldSize]
			newP, ok2 := trees[p.NewSize]
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("our consistency proof %d->%d: no verified checkpoint for one of the sizes", p.OldSize, p.NewSize)
			}
			proof, err := toHashes(p.Proof)
			if err != nil {
				return nil, err
			}
			if err := tlog.CheckTree(proof, newP.size, newP.root, oldT.size, oldT.root); err != nil {
				return nil, fmt.Errorf("tlog.CheckTree rejected our consistency proof %d->%d: %w", oldT.size, newP.size, err)
			}
			theirs, err := tlog.ProveTree(newP.size, oldT.size, hr)
			if err != nil {
				return nil, err
			}
			if !equalHashes(theirs, proof) {
				return nil, fmt.Errorf("our consistency proof %d->%d differs from tlog.ProveTree over the tiles", oldT.size, newP.size)
			}
			c.OurConsistency++
		}
	}

	// --- Every hash tile tlog read, with one bit flipped, must be caught. ------------------------------------------------
	// TileHashReader refuses most outright. Not all: x/mod v0.36.0's ReadHashes authenticates full tiles against their
	// parents in a loop that starts at len(stx) (the number of subtree hashes making up the root) instead of at the
	// number of distinct tiles those came from, so when several of those subtrees share a tile (613 leaves: 5 subtrees
	// in 2 tiles) a full level-0 tile read alongside is returned unauthenticated. The proofs still catch it: a proof
	// for a neighbouring leaf carries the flipped hash, and CheckRecord against the signed root refuses it. Such tiles
	// are counted in tilesCaughtOnlyByCheckRecord.
	for k, reader := range readers {
		t := roots[k]
		for _, tile := range sortedTiles(reader.read) {
			path, _ := c2spTilePath(tile)
			bad := &httpTileReader{log: lg, tamper: &tile}
			badHR := tlog.TileHashReader(tlog.Tree{N: t.size, Hash: t.root}, bad)
			// The last hash the tile holds: reading it makes tlog fetch this very tile.
			x := tlog.StoredHashIndex(tile.L*tileHeight, tile.N<<tileHeight+int64(tile.W)-1)
			if _, err := badHR.ReadHashes([]int64{x}); err != nil {
				c.RejectedTiles++
				continue
			}
			if tile.L != 0 {
				return nil, fmt.Errorf("tlog.TileHashReader (tree %d) accepted %s with a flipped bit", t.size, path)
			}
			caught := false
			for j := tile.N << tileHeight; j < tile.N<<tileHeight+int64(tile.W) && !caught; j++ {
				h, ok := records[j]
				if !ok {
					return nil, fmt.Errorf("tampered %s: no verified record hash for leaf %d", path, j)
				}
				p, err := tlog.ProveRecord(t.size, j, badHR)
				caught = err != nil || tlog.CheckRecord(p, t.size, t.root, j, h) != nil
			}
			if !caught {
				return nil, fmt.Errorf("tree %d: %s with a flipped bit passed TileHashReader and every CheckRecord", t.size, path)
			}
			c.RejectedTiles++
			c.TilesCaughtOnlyByCheckRecord++
		}
	}

	c.Fetched = make([]string, 0, len(lg.cache))
	for path := range lg.cache {
		c.Fetched = append(c.Fetched, path)
	}
	sort.Strings(c.Fetched)
	return c, nil
}

// proveAndCheckRecord: tlog.ProveRecord from the tiles, tlog.CheckRecord with the record hash, then the negatives.
func proveAndCheckRecord(t tree, index int64, record tlog.Hash, hr tlog.HashReader, c *tileCounts) error {
	proof, err := tlog.ProveRecord(t.size, index, hr)
	if err != nil {
		return fmt.Errorf("tlog.ProveRecord(%d, %d) from the tiles: %w", t.size, index, err)
	}
	if err := tlog.CheckRecord(proof, t.size, t.root, index, record); err != nil {
		return fmt.Errorf("tlog.CheckRecord(index %d, size %d): %w", index, t.size, err)
	}
	c.Inclusion++
	reject := func(p []tlog.Hash, root tlog.Hash, i int64, h tlog.Hash, what string) error {
		if err := tlog.CheckRecord(p, t.size, root, i, h); err == nil {
			return fmt.Errorf("tlog.CheckRecord(index %d, size %d) accepted a bad proof: %s", index, t.size, what)
		}
		c.RejectedInclusion++
		return nil
	}
	for k := range proof {
		bad := clone(proof)
		bad[k][(k*5)%tlog.HashSize] ^= 1 << (k % 8)
		if err := reject(bad, t.root, index, record, fmt.Sprintf("flipped bit in proof hash %d", k)); err != nil {
			return err
		}
	}
	if t.size > 1 {
		if err := reject(proof, t.root, (index+1)%t.size, record, "wrong index"); err != nil {
			return err
		}
	}
	badRoot := t.root
	badRoot[31] ^= 0x40
	if err := reject(proof, badRoot, index, record, "flipped bit in root"); err != nil {
		return err
	}
	badRecord := record
	badRecord[0] ^= 0x02
	return reject(proof, t.root, index, badRecord, "flipped bit in record hash")
}

func rejectBadTreeProofs(proof []tlog.Hash, newT, oldT tree, c *tileCounts) error {
	var n counts
	for i := range proof {
		bad := clone(proof)
		bad[i][(3*i)%tlog.HashSize] ^= 1 << (i % 8)
		if err := rejectTree(bad, newT, oldT, &n, "flipped bit in proof hash %d", i); err != nil {
			return err
		}
	}
	badOld := oldT
	badOld.root[1] ^= 8
	if err := rejectTree(proof, newT, badOld, &n, "flipped bit in old root"); err != nil {
		return err
	}
	badNew := newT
	badNew.root[2] ^= 16
	if err := rejectTree(proof, badNew, oldT, &n, "flipped bit in new root"); err != nil {
		return err
	}
	if len(proof) > 0 {
		if err := rejectTree(proof[1:], newT, oldT, &n, "proof without its first hash"); err != nil {
			return err
		}
	}
	if oldT.size > 1 {
		if err := rejectTree(proof, newT, tree{size: oldT.size - 1, root: oldT.root}, &n, "old size - 1"); err != nil {
			return err
		}
	}
	c.RejectedConsistency += n.RejectedConsistency
	return nil
}

func leafHash(hr tlog.HashReader, index int64) (tlog.Hash, error) {
	hs, err := hr.ReadHashes([]int64{tlog.StoredHashIndex(0, index)})
	if err != nil {
		return tlog.Hash{}, fmt.Errorf("leaf hash %d from the tiles: %w", index, err)
	}
	return hs[0], nil
}

// splitBundle: c2sp.org/tlog-tiles entry bundle, a sequence of big-endian uint16 length + bytes.
func splitBundle(data []byte) ([][]byte, error) {
	var out [][]byte
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, errors.New("truncated length prefix")
		}
		n := int(data[0])<<8 | int(data[1])
		if len(data) < 2+n {
			return nil, fmt.Errorf("entry %d: %d bytes announced, %d left", len(out), n, len(data)-2)
		}
		out = append(out, data[2:2+n])
		data = data[2+n:]
	}
	return out, nil
}

// sampleIndexes: every leaf up to maxSampleAll; above, the first and last two and both sides of 256-leaf boundaries
// (spaced so that there are about a thousand).
func sampleIndexes(size int64) []int64 {
	if size <= maxSampleAll {
		out := make([]int64, size)
		for i := range out {
			out[i] = int64(i)
		}
		return out
	}
	set := map[int64]bool{0: true, 1: true, size - 2: true, size - 1: true}
	stride := int64(1<<tileHeight) * ((size>>tileHeight)/500 + 1)
	for b := stride; b < size; b += stride {
		set[b-1], set[b] = true, true
	}
	return sortedKeys(set)
}

func sortedKeys(m map[int64]bool) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func sortedTiles(m map[tlog.Tile]bool) []tlog.Tile {
	out := make([]tlog.Tile, 0, len(m))
	for t := range m {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].L != out[j].L {
			return out[i].L < out[j].L
		}
		if out[i].N != out[j].N {
			return out[i].N < out[j].N
		}
		return out[i].W < out[j].W
	})
	return out
}
