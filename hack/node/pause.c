/* The pod sandbox's process on the dev node: it holds the pod's namespaces and reaps the
 * orphans of the pod's containers. No registry is reachable from the dev node, so the
 * node builds its own pause image around this (tests/harness/node.py). */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal_number) {
    (void)signal_number;
    _exit(0);
}

static void reap(int signal_number) {
    (void)signal_number;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) {
        pause();
    }
}
