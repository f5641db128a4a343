package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The files a member keeps in its data directory beside raft's and the
// store (doc.go lists them): its id, its mode, whether it is a learner.

// memberFile records this member's id in the data directory: a restart
// keeps its identity whatever the flags say (etcd ignores --initial-* on a
// restart too).
const memberFile = "member-id"

func readMemberID(dataDir string) (uint64, bool, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, memberFile))
	if os.IsNotExist(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("node: read member id: %w", err)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if err != nil || id == 0 {
		return 0, false, fmt.Errorf("node: member id file %s is corrupt", filepath.Join(dataDir, memberFile))
	}
	return id, true, nil
}

// modeFile records the mode a data directory was created in: a store of
// one mode cannot be read in the other (sharded mode keeps a placement
// group and ranges beside range 1).
const modeFile = "mode"

// checkMode refuses to start a data directory in the other mode than the
// one it was created in (one created before modes were recorded is not
// checked).
func checkMode(dataDir string, sharded bool) error {
	got, ok, err := recordedMode(dataDir)
	if err != nil || !ok || got == sharded {
		return err
	}
	flag := "--single-group"
	if got {
		flag = "--single-group=false"
	}
	return fmt.Errorf("node: the data directory %s was created in %s mode; start it so (%s): a store does not change modes", dataDir, modeName(got), flag)
}

// modeName is a mode as the mode file and the logs name it.
func modeName(sharded bool) string {
	if sharded {
		return "sharded"
	}
	return "single-group"
}

// recordedMode reads the mode a data directory was created in (see
// modeFile); ok is false if it records none: a new directory, a restored
// backup not started yet, or one created before modes were recorded.
func recordedMode(dataDir string) (sharded, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(dataDir, modeFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("node: read the data directory's mode: %w", err)
	}
	switch mode := strings.TrimSpace(string(data)); mode {
	case modeName(true):
		return true, true, nil
	case modeName(false):
		return false, true, nil
	default:
		return false, false, fmt.Errorf("node: the data directory's mode file %s holds %q: want single-group or sharded",
			filepath.Join(dataDir, modeFile), mode)
	}
}

// adoptMode applies Config.AdoptRecordedMode to cfg.Sharded and reports
// whether it changed it: a data directory that records its mode starts in
// that mode. One that has started before (it has a member id) but records
// no mode was created before modes were recorded, when single-group mode
// was the default: it starts in single-group mode, as it did then.
// (checkMode does not check such a directory: a mode given explicitly,
// without AdoptRecordedMode, is taken as it is.)
func adoptMode(cfg *Config) (changed bool, err error) {
	if !cfg.AdoptRecordedMode {
		return false, nil
	}
	sharded, ok, err := recordedMode(cfg.DataDir)
	if err != nil {
		return false, err
	}
	if !ok {
		_, started, err := readMemberID(cfg.DataDir)
		if err != nil || !started {
			return false, err
		}
		sharded = false
	}
	changed = sharded != cfg.Sharded
	cfg.Sharded = sharded
	return changed, nil
}

// recordMode records the mode of a data directory started for the first
// time (see checkMode).
func recordMode(dataDir string, sharded bool) error {
	if err := os.WriteFile(filepath.Join(dataDir, modeFile), []byte(modeName(sharded)+"\n"), 0o600); err != nil {
		return fmt.Errorf("node: record the data directory's mode: %w", err)
	}
	return nil
}

func writeMemberID(dataDir string, id uint64) error {
	if err := os.WriteFile(filepath.Join(dataDir, memberFile), []byte(fmt.Sprintf("%x\n", id)), 0o600); err != nil {
		return fmt.Errorf("node: record member id: %w", err)
	}
	return nil
}

// learnerFile marks a member that joined as a learner and has not been
// seen promoted yet: raft must restart it as non-voting until it is.
const learnerFile = "learner"

// placementRoleFile records this member's role in the placement group
// ("voter" or "non-voting"), which sharded mode restarts its replica in:
// written non-voting when the replica joins (a founder past the first
// --placement-replicas, or a member added), and voter only once the
// replica was seen promoted and took a snapshot (trackPlacementRole). A
// data directory without it (from before roles) has the learner mark's
// role.
const placementRoleFile = "placement-role"

// placementNonVoting reports whether this member's placement replica
// restarts non-voting.
func placementNonVoting(dataDir string) bool {
	b, err := os.ReadFile(filepath.Join(dataDir, placementRoleFile))
	if err != nil {
		return isLearner(dataDir)
	}
	return strings.TrimSpace(string(b)) == "non-voting"
}

// setPlacementNonVoting records this member's placement role.
func setPlacementNonVoting(dataDir string, nonVoting bool) error {
	role := "voter\n"
	if nonVoting {
		role = "non-voting\n"
	}
	if err := os.WriteFile(filepath.Join(dataDir, placementRoleFile), []byte(role), 0o600); err != nil {
		return fmt.Errorf("node: record the placement role: %w", err)
	}
	return nil
}

func isLearner(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, learnerFile))
	return err == nil
}

func setLearner(dataDir string, learner bool) error {
	p := filepath.Join(dataDir, learnerFile)
	if learner {
		return os.WriteFile(p, nil, 0o600)
	}
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}
