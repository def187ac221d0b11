# pause SECONDS: wait without starting a process. `sleep` is a fork and an exec, ~15 ms
# of CPU under tcg, and the boot's waits poll 20 times a second while the boot needs
# every cycle. `read -t` on a FIFO opened read-write (so it never sees an end of file,
# and nobody writes to it) simply times out. Sourced by the boot and the services.
pause() {
    if [ -p /run/vmctl/pause ]; then
        read -r -t "$1" _ <>/run/vmctl/pause || :
    else
        sleep "$1"
    fi
}
