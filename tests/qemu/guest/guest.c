/*
 * guest.c — a tiny bare-metal guest for the QEMU TLS migration tests.
 *
 * It keeps dirtying almost all of its RAM, so that a precopy migration never
 * converges on its own and every page crosses the TLS session many times,
 * and it checks itself, so that a page lost, duplicated or corrupted by the
 * migration shows up as an error counter the test reads on the destination.
 *
 * Physical memory (no paging; the guest needs at least 64 MiB):
 *   0x00100000  this image (well under 512 KiB)
 *   0x00180000  struct rg_guest_status, read by the test with QMP pmemsave
 *   0x01000000  static region, RG_STATIC_BYTES: a pattern written once at
 *               boot, then verified 1 MiB per pass, forever
 *   0x02000000  dirty region, up to the top of RAM: every pass rewrites
 *               RG_WORDS_PER_PAGE words spread over every 4 KiB page
 *
 * Invariant, checked before each page is rewritten: while pass p is at page
 * i, pages below i hold pass p's words and pages from i on hold pass p-1's.
 * The loop state lives in registers, which migrate with the RAM, so the
 * invariant survives any stop/migrate/cont at any instruction.
 *
 * Pacing: after each pass the guest sleeps (hlt) for sleep=N ticks of a
 * 100 Hz PIT timer (multiboot command line, -append "sleep=N"; default
 * RG_DEFAULT_SLEEP), so that the vCPU does not take a whole host core from
 * the migration it is being tested with. Even paced, it dirties its RAM far
 * faster than any TLS migration sends it. The PIT, PIC and CPU state
 * migrate with it: a destination that runs on shows they did.
 *
 * Output goes to isa-debugcon (port 0xe9): one line at boot, one every
 * RG_REPORT_EVERY passes, one per error (the first RG_MAX_REPORTED).
 *
 * Build: gcc -m32 -ffreestanding -nostdlib (no libc, no multilib needed).
 */
typedef unsigned int u32;
typedef unsigned char u8;

#define RG_STATUS_ADDR     0x00180000u
#define RG_STATIC_BASE     0x01000000u
#define RG_STATIC_BYTES    0x01000000u          /* 16 MiB */
#define RG_DIRTY_BASE      0x02000000u
#define RG_PAGE            4096u
#define RG_WORDS_PER_PAGE  8u
#define RG_SLICE_BYTES     0x00100000u          /* static bytes verified per pass */
#define RG_REPORT_EVERY    256u
#define RG_MAX_REPORTED    8u
#define RG_MAGIC           0x31474752u          /* "RGG1" */
#define RG_DEFAULT_SLEEP   5u                   /* ticks of 10 ms after each pass */
#define RG_PIT_HZ          100u

/* Layout shared with tests/qemu/migrate.py (GuestStatus): 16 u32, LE. */
struct rg_guest_status {
	u32 magic;
	u32 version;
	u32 passes;            /* completed dirty passes (pass 0 is the boot fill) */
	u32 page;              /* page index the current pass is at */
	u32 errors;            /* dirty-page words that broke the invariant */
	u32 static_rounds;     /* complete verifications of the static region */
	u32 static_errors;     /* static words that did not match */
	u32 dirty_base;
	u32 dirty_pages;
	u32 ram_top;
	u32 first_bad_addr;
	u32 first_bad_expected;
	u32 first_bad_found;
	u32 fault;             /* 0xdeadfa17 once a CPU exception hit (boot.S) */
	u32 ticks;             /* timer ticks (100 Hz) */
	u32 sleep_ticks;       /* pacing in force */
};

struct multiboot_info {
	u32 flags;
	u32 mem_lower;         /* KiB below 1 MiB (flags bit 0) */
	u32 mem_upper;         /* KiB above 1 MiB, up to the first hole */
	u32 boot_device;
	u32 cmdline;           /* flags bit 2 */
};

struct idt_gate {
	unsigned short offset_low, selector;
	u8 zero, type;
	unsigned short offset_high;
};

extern void isr_timer(void), isr_ignore(void), isr_fault(void);
volatile u32 guest_ticks;
static struct idt_gate idt[256];

static volatile struct rg_guest_status *const status =
	(volatile struct rg_guest_status *)RG_STATUS_ADDR;

static inline void outb(unsigned short port, u8 value)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static void set_gate(unsigned vector, void (*handler)(void))
{
	u32 addr = (u32)handler;
	idt[vector].offset_low = (unsigned short)addr;
	idt[vector].selector = 0x08;
	idt[vector].zero = 0;
	idt[vector].type = 0x8e;     /* present, ring 0, 32-bit interrupt gate */
	idt[vector].offset_high = (unsigned short)(addr >> 16);
}

/* IDT, PIC remapped to vectors 32-47 with only IRQ 0 unmasked, PIT at 100 Hz. */
static void timer_init(void)
{
	for (unsigned v = 0; v < 256; v++)
		set_gate(v, v < 32 ? isr_fault : isr_ignore);
	set_gate(32, isr_timer);
	struct { unsigned short limit; u32 base; } __attribute__((packed)) idtr =
		{ sizeof idt - 1, (u32)idt };
	__asm__ volatile("lidt %0" : : "m"(idtr));

	outb(0x20, 0x11); outb(0xa0, 0x11);     /* ICW1: init, ICW4 follows */
	outb(0x21, 0x20); outb(0xa1, 0x28);     /* ICW2: vector bases */
	outb(0x21, 0x04); outb(0xa1, 0x02);     /* ICW3: cascade on IRQ 2 */
	outb(0x21, 0x01); outb(0xa1, 0x01);     /* ICW4: 8086 mode */
	outb(0x21, 0xfe); outb(0xa1, 0xff);     /* masks: IRQ 0 only */

	u32 divisor = 1193182u / RG_PIT_HZ;
	outb(0x43, 0x34);                       /* channel 0, lo/hi, rate generator */
	outb(0x40, (u8)divisor);
	outb(0x40, (u8)(divisor >> 8));
}

static void sleep_ticks(u32 n)
{
	u32 start = guest_ticks;
	while (guest_ticks - start < n)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	status->ticks = guest_ticks;
}

/* "sleep=N" anywhere on the multiboot command line. */
static u32 cmdline_sleep(const struct multiboot_info *info)
{
	if (!(info->flags & 4) || !info->cmdline)
		return RG_DEFAULT_SLEEP;
	for (const char *p = (const char *)info->cmdline; *p; p++) {
		if (p[0] == 's' && p[1] == 'l' && p[2] == 'e' && p[3] == 'e' && p[4] == 'p' && p[5] == '=') {
			u32 v = 0;
			for (p += 6; *p >= '0' && *p <= '9'; p++)
				v = v * 10 + (u32)(*p - '0');
			return v;
		}
	}
	return RG_DEFAULT_SLEEP;
}

static void put_str(const char *s)
{
	while (*s)
		outb(0xe9, (u8)*s++);
}

static void put_hex(u32 v)
{
	char buf[11] = "0x";
	for (int i = 0; i < 8; i++)
		buf[2 + i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 15];
	buf[10] = 0;
	put_str(buf);
}

static void put_dec(u32 v)
{
	char buf[11];
	int i = 10;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put_str(buf + i);
}

/* The word a dirty page holds at slot k after pass p: injective in p. */
static inline u32 dirty_word(u32 pass, u32 addr, u32 k)
{
	return (pass * 0x9E3779B1u) ^ addr ^ (k * 0x85EBCA77u);
}

static inline u32 static_word(u32 addr)
{
	u32 x = addr * 0x2545F491u;
	return x ^ (x >> 15) ^ 0x5bd1e995u;
}

static void report_error(const char *what, u32 addr, u32 expected, u32 found, u32 count)
{
	if (count == 1) {
		status->first_bad_addr = addr;
		status->first_bad_expected = expected;
		status->first_bad_found = found;
	}
	if (count > RG_MAX_REPORTED)
		return;
	put_str("rg-guest: BAD ");
	put_str(what);
	put_str(" addr=");
	put_hex(addr);
	put_str(" expected=");
	put_hex(expected);
	put_str(" found=");
	put_hex(found);
	put_str("\n");
}

static void dirty_pass(u32 pass, u32 base, u32 pages)
{
	u32 prev = pass - 1;
	for (u32 i = 0; i < pages; i++) {
		volatile u32 *page = (volatile u32 *)(base + i * RG_PAGE);
		status->page = i;
		for (u32 k = 0; k < RG_WORDS_PER_PAGE; k++) {
			volatile u32 *w = page + k * (RG_PAGE / 4 / RG_WORDS_PER_PAGE);
			u32 addr = (u32)w;
			if (pass != 0) {
				u32 expected = dirty_word(prev, addr, k);
				u32 found = *w;
				if (found != expected) {
					u32 n = status->errors + 1;
					status->errors = n;
					report_error("dirty", addr, expected, found, n + status->static_errors);
				}
			}
			*w = dirty_word(pass, addr, k);
		}
	}
}

static void static_check(u32 *offset)
{
	for (u32 a = RG_STATIC_BASE + *offset; a < RG_STATIC_BASE + *offset + RG_SLICE_BYTES; a += 4) {
		u32 found = *(volatile u32 *)a;
		u32 expected = static_word(a);
		if (found != expected) {
			u32 n = status->static_errors + 1;
			status->static_errors = n;
			report_error("static", a, expected, found, n + status->errors);
		}
	}
	*offset += RG_SLICE_BYTES;
	if (*offset >= RG_STATIC_BYTES) {
		*offset = 0;
		status->static_rounds = status->static_rounds + 1;
	}
}

void guest_main(u32 magic, const struct multiboot_info *info);

void guest_main(u32 magic, const struct multiboot_info *info)
{
	u32 ram_top = 64u << 20;
	u32 sleep = RG_DEFAULT_SLEEP;
	if (magic == 0x2BADB002u && (info->flags & 1))
		ram_top = 0x00100000u + info->mem_upper * 1024u;
	if (magic == 0x2BADB002u)
		sleep = cmdline_sleep(info);
	if (ram_top > 0xC0000000u)
		ram_top = 0xC0000000u;
	ram_top &= ~(RG_PAGE - 1);
	u32 pages = ram_top > RG_DIRTY_BASE ? (ram_top - RG_DIRTY_BASE) / RG_PAGE : 0;

	for (u32 i = 0; i < sizeof(struct rg_guest_status) / 4; i++)
		((volatile u32 *)status)[i] = 0;
	status->version = 1;
	status->dirty_base = RG_DIRTY_BASE;
	status->dirty_pages = pages;
	status->ram_top = ram_top;
	status->sleep_ticks = sleep;
	timer_init();

	for (u32 a = RG_STATIC_BASE; a < RG_STATIC_BASE + RG_STATIC_BYTES; a += 4)
		*(volatile u32 *)a = static_word(a);
	dirty_pass(0, RG_DIRTY_BASE, pages);
	status->magic = RG_MAGIC;   /* last: the test waits for it */

	put_str("rg-guest: ready, dirtying ");
	put_dec(pages * (RG_PAGE / 1024) / 1024);
	put_str(" MiB, sleeping ");
	put_dec(sleep * (1000 / RG_PIT_HZ));
	put_str(" ms after each pass\n");

	u32 static_offset = 0;
	for (u32 pass = 1;; pass++) {
		dirty_pass(pass, RG_DIRTY_BASE, pages);
		static_check(&static_offset);
		status->passes = pass;
		sleep_ticks(sleep);
		if (pass % RG_REPORT_EVERY == 0) {
			put_str("rg-guest: pass ");
			put_dec(pass);
			put_str(" errors ");
			put_dec(status->errors + status->static_errors);
			put_str("\n");
		}
	}
}
