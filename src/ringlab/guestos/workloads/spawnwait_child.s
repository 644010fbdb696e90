; spawnwait_child.s - program 1 of the `spawnwait` workload: exits at once with its pid.

.include "lib.s"

main:
    call sys_getpid                 ; main's eax is the exit status
    ret
