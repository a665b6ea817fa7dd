/*
 * boot.S — multiboot (v1) entry and interrupt stubs of the smoke-test guest.
 *
 * QEMU's -kernel loader finds the header, loads the ELF segments at their
 * physical addresses and jumps to _start in 32-bit protected mode, paging
 * off, interrupts off, EAX = multiboot magic, EBX = multiboot info. We load
 * our own flat GDT (the loader's may not outlive it, and interrupts reload
 * CS from it), set a stack and call guest_main(magic, info), which never
 * returns. guest.c builds the IDT from the stubs below.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000002            /* bit 1: memory size in the info */

	.section .multiboot, "a"
	.balign 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .rodata
	.balign 8
gdt:
	.quad 0                        /* null */
	.quad 0x00cf9a000000ffff       /* 0x08: code, flat 4 GiB */
	.quad 0x00cf92000000ffff       /* 0x10: data, flat 4 GiB */
gdt_end:
gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt

	.section .bss
	.balign 16
stack_bottom:
	.skip 65536
stack_top:

	.section .text
	.globl _start
_start:
	cli
	lgdt gdt_ptr
	ljmp $0x08, $1f
1:	movw $0x10, %cx
	movw %cx, %ds
	movw %cx, %es
	movw %cx, %fs
	movw %cx, %gs
	movw %cx, %ss
	movl $stack_top, %esp
	pushl %ebx
	pushl %eax
	call guest_main
2:	cli
	hlt
	jmp 2b

/* IRQ 0 (PIT, remapped to vector 32): count a tick, end of interrupt. */
	.globl isr_timer
isr_timer:
	pushl %eax
	incl guest_ticks
	movb $0x20, %al
	outb %al, $0x20
	popl %eax
	iret

/* Any other interrupt (masked at the PIC; spurious IRQ 7/15): ignore. */
	.globl isr_ignore
isr_ignore:
	iret

/* CPU exceptions (vectors 0-31): record and stop; the test sees a stuck guest. */
	.globl isr_fault
isr_fault:
	movl $0xdeadfa17, 0x00180034   /* rg_guest_status.fault */
3:	cli
	hlt
	jmp 3b

	.section .note.GNU-stack, "", @progbits
