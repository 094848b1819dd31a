// SPDX-License-Identifier: Apache-2.0
/*
 * Red zone check for 5-byte nop probe sites (include/asynctrace/probes.h,
 * ASYNCTRACE_PROBE_NOP5). A leaf function keeps a known pattern in its red
 * zone across an asynctrace probe site and counts the calls that find it
 * damaged. Once the kernel optimizes the uprobe on the site into a call to its
 * trampoline, the call and the trampoline's pushes write below rsp: built
 * without -mno-red-zone (redzone_unsafe) the pattern gets overwritten, built
 * with it (redzone_safe) the compiler moves rsp first and nothing is damaged.
 * tests/e2e/nop5_test.cpp runs both under a tracer; redzone_int3 (1-byte nop
 * site) is the before of docs/performance.md "5-byte nop probe sites".
 *
 * usage: redzone HITS [--wait]
 * Prints "site 0x<address of the task__resume probe site>" and its first five
 * bytes as the process sees them. With --wait: prints "ready", waits for
 * SIGUSR1, hits, prints the result and "done", waits for SIGUSR1 again (the
 * test reads the site while the tracer is still attached), exits.
 * Result: "damaged D hits N ns_per_hit X".
 */
#define _GNU_SOURCE
#define ASYNCTRACE_DEFINE_SEMAPHORES
#include "asynctrace/probes.h"

#include <elf.h>
#include <link.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* 112 bytes: the most of the 128-byte red zone a 16-byte aligned array gets
 * without GCC moving rsp (16 words make it subtract 16 and straddle rsp). */
#define WORDS 14

/*
 * Leaf (no calls) whose frame fits the red zone: without -mno-red-zone GCC -O2
 * keeps `zone` at rsp-0x78 .. rsp-0x8 and never moves rsp (objdump -d
 * redzone_unsafe: stores to -0x78(%rsp,%rcx,8), no sub); with it, it
 * subtracts from rsp first. volatile keeps every store and load in memory;
 * the empty asm statements keep them on their side of the probe site. The
 * probe fires only while a tracer holds the semaphore, as in a runtime.
 */
__attribute__((noinline)) static int hit(uint64_t i)
{
	volatile uint64_t zone[WORDS];
	int damaged = 0;

	for (int w = 0; w < WORDS; w++)
		zone[w] = 0xa5a5a5a500000000ULL ^ (i << 8) ^ (uint64_t)w;
	__asm__ volatile("" ::: "memory");
	if (ASYNCTRACE_TASK_RESUME_ENABLED())
		ASYNCTRACE_TASK_RESUME(i);
	__asm__ volatile("" ::: "memory");
	for (int w = 0; w < WORDS; w++)
		damaged |= zone[w] != (0xa5a5a5a500000000ULL ^ (i << 8) ^ (uint64_t)w);
	return damaged;
}

/* The task__resume site, from this executable's .note.stapsdt (not a loaded
 * section: read from the file) plus the load bias. */
static int main_bias(struct dl_phdr_info *info, size_t size, void *bias)
{
	(void)size;
	*(uintptr_t *)bias = info->dlpi_addr;
	return 1; /* the first object is the executable */
}

static uintptr_t probe_site(const char *probe)
{
	FILE *f = fopen("/proc/self/exe", "rb");
	if (!f)
		return 0;
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	rewind(f);
	char *elf = malloc((size_t)size);
	if (!elf || fread(elf, 1, (size_t)size, f) != (size_t)size) {
		fclose(f);
		free(elf);
		return 0;
	}
	fclose(f);

	uintptr_t site = 0;
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)elf;
	const Elf64_Shdr *sh = (const Elf64_Shdr *)(elf + eh->e_shoff);
	const char *shstr = elf + sh[eh->e_shstrndx].sh_offset;
	for (int s = 0; s < eh->e_shnum && !site; s++) {
		if (strcmp(shstr + sh[s].sh_name, ".note.stapsdt") != 0)
			continue;
		for (uint64_t off = 0; off + sizeof(Elf64_Nhdr) <= sh[s].sh_size;) {
			const Elf64_Nhdr *nh = (const Elf64_Nhdr *)(elf + sh[s].sh_offset + off);
			const char *desc = (const char *)(nh + 1) + ((nh->n_namesz + 3) & ~3u);
			/* desc: pc, base, semaphore, then "provider\0name\0args\0" */
			const char *provider = desc + 24;
			const char *name = provider + strlen(provider) + 1;
			if (nh->n_type == 3 && strcmp(provider, "asynctrace") == 0 && strcmp(name, probe) == 0) {
				memcpy(&site, desc, sizeof(site));
				break;
			}
			off += sizeof(*nh) + ((nh->n_namesz + 3) & ~3u) + ((nh->n_descsz + 3) & ~3u);
		}
	}
	free(elf);
	if (site) {
		uintptr_t bias = 0;
		dl_iterate_phdr(main_bias, &bias);
		site += bias;
	}
	return site;
}

static void wait_usr1(void)
{
	sigset_t set;
	int sig;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigwait(&set, &sig);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: redzone HITS [--wait]\n");
		return 2;
	}
	const uint64_t hits = strtoull(argv[1], NULL, 10);
	const int wait = argc > 2 && strcmp(argv[2], "--wait") == 0;

	/* Blocked before anything can send it, so that sigwait() gets it. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);

	const uintptr_t site = probe_site("task__resume");
	if (!site) {
		fprintf(stderr, "redzone: no asynctrace:task__resume note in /proc/self/exe\n");
		return 1;
	}
	const unsigned char *b = (const unsigned char *)site;
	printf("site 0x%lx bytes %02x %02x %02x %02x %02x\n", (unsigned long)site, b[0], b[1], b[2], b[3],
	       b[4]);
	if (wait) {
		printf("ready\n");
		fflush(stdout);
		wait_usr1();
	}

	struct timespec t0, t1;
	uint64_t damaged = 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint64_t i = 0; i < hits; i++)
		damaged += (uint64_t)hit(i);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	const double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
	printf("damaged %lu hits %lu ns_per_hit %.1f\n", (unsigned long)damaged, (unsigned long)hits,
	       hits ? ns / (double)hits : 0.0);
	if (wait) {
		printf("done\n");
		fflush(stdout);
		wait_usr1();
	}
	return 0;
}
