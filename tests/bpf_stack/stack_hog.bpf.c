// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The stack checker's own test: a chain that is over the 384-byte budget
 * only through a bpf_loop callback and a global function (~200 bytes each),
 * the shape of the batch_flush chain the verifier once refused. Never
 * loaded; bpf_stack_check must report it over budget. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

__noinline int hog_leaf(__u64 *p)
{
	volatile __u64 big[25];

	for (int i = 0; i < 25; i++)
		big[i] = p ? p[0] + i : i;
	return (int)big[24];
}

static long hog_callback(__u64 index, void *ctx)
{
	__u64 v = index;

	return hog_leaf(&v) > 1000;
}

SEC("uprobe")
int hog(void *ctx)
{
	volatile __u64 big[25];

	for (int i = 0; i < 25; i++)
		big[i] = i;
	bpf_loop(4, hog_callback, NULL, 0);
	return (int)big[3];
}
