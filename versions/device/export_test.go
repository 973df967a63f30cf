package device

// Crash drops d as a killed process would: its descriptors close (so its
// locks go) and nothing else happens.
func Crash(d *Device) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	d.closed = true
	if d.overlay != nil {
		d.overlay.Close()
	}
	d.lock.Unlock()
}
