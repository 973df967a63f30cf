package versions_test

import (
	"errors"
	"testing"
	"time"

	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
)

func TestSetExpire(t *testing.T) {
	db := newDB(t)
	uid := addVersion(t, db, "vol", now.Add(-time.Hour), metastore.StatusValid, false)
	at := time.Date(2027, 1, 1, 1, 0, 0, 0, time.FixedZone("X", 3600))
	v, err := versions.SetExpire(db, uid, &at)
	if err != nil || v.Expire == nil || !v.Expire.Equal(at) || v.Expire.Location() != time.UTC {
		t.Fatalf("SetExpire = %+v, %v", v, err)
	}
	if got, _ := db.Version(uid); got.Expire == nil || !got.Expire.Equal(at) {
		t.Fatalf("stored expire %v", got.Expire)
	}
	if v, err = versions.SetExpire(db, uid, nil); err != nil || v.Expire != nil {
		t.Fatalf("clearing: %+v, %v", v, err)
	}
	if _, err := versions.SetExpire(db, "V0000000000000000000f", &at); !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Fatalf("unknown version: %v", err)
	}
}

func TestRemoveCheck(t *testing.T) {
	db := newDB(t)
	uid := addVersion(t, db, "vol", now.Add(-time.Hour), metastore.StatusValid, false)
	errNo := errors.New("no")
	var seen string
	err := versions.Remove(db, uid, versions.RemoveOptions{Now: now, Check: func(v *metastore.Version) error { seen = v.UID; return errNo }})
	if !errors.Is(err, errNo) || seen != uid {
		t.Fatalf("Remove with a refusing Check = %v (saw %q)", err, seen)
	}
	if _, err := db.Version(uid); err != nil {
		t.Fatalf("refused version gone: %v", err)
	}
	if err := versions.Remove(db, uid, versions.RemoveOptions{Now: now, Check: func(*metastore.Version) error { return nil }}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Version(uid); !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Fatalf("version still there: %v", err)
	}
}
